"""FedALT: the rest-of-world rule (hand computation: the others' mean, never the client's own) and
the per-token mixer (against the gated sum computed by hand)."""

from __future__ import annotations

import torch

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.fedalt import (
    ROW_ADAPTER,
    mixer_parameters,
    rest_of_world,
    set_mixer_state,
)
from fedamole.algorithms.lora_common import (
    DEFAULT_ADAPTER,
    lora_layers,
    lora_state,
    set_lora_state,
)
from fedamole.federated.messages import ClientMessage
from fedamole.models import load_model_and_tokenizer

KEY = "lora_A:model.layers.0.self_attn.q_proj"


def _algo(smoke, clients=4):
    cfg = smoke.replace(**{"federation.algorithm": "fedalt", "federation.num_clients": clients})
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("fedalt")(cfg)
    model = algo.prepare_model(model)
    algo.setup(model)
    return algo, model


def test_rest_of_world_is_the_mean_of_the_others_last_uploads(smoke):
    algo, _ = _algo(smoke)
    first = algo.configure_round(0)
    assert all(msg.tensors == {} for msg in first.values())  # round 1's rest of world is zero

    def uploads(values, rnd):
        return {
            c: ClientMessage(
                rnd, c, {k: torch.full_like(v, x) for k, v in algo.global_state.items()}, {}, {}
            )
            for c, x in values.items()
        }

    algo.aggregate(1, uploads({0: 1.0, 1: 2.0, 2: 4.0, 3: 8.0}, 1))
    sent = algo.configure_round(2)
    # by hand: client 0 gets (2 + 4 + 8) / 3, client 3 gets (1 + 2 + 4) / 3, never its own
    for client, mean in ((0, 14 / 3), (1, 13 / 3), (2, 11 / 3), (3, 7 / 3)):
        torch.testing.assert_close(
            sent[client].tensors[KEY], torch.full_like(algo.global_state[KEY], mean)
        )
    # round 2: client 3 is absent and contributes its last upload (8)
    algo.aggregate(2, uploads({0: 10.0, 1: 20.0, 2: 40.0}, 2))
    sent = algo.configure_round(3)
    torch.testing.assert_close(
        sent[0].tensors[KEY], torch.full_like(algo.global_state[KEY], 68 / 3)
    )
    torch.testing.assert_close(
        sent[3].tensors[KEY], torch.full_like(algo.global_state[KEY], 70 / 3)
    )
    assert rest_of_world({1: {"k": torch.ones(1)}}, 1) == {}  # nobody else has uploaded


def test_the_mixer_gates_the_two_adapters_per_token(smoke):
    _, model = _algo(smoke, clients=3)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    for adapter in (DEFAULT_ADAPTER, ROW_ADAPTER):
        state = {
            k: torch.randn(v.shape, generator=gen) for k, v in lora_state(model, adapter).items()
        }
        set_lora_state(model, state, adapter)
    mixers = {
        f"mixer:{n}": torch.randn(2, m.in_features, generator=gen)
        for n, m in lora_layers(model).items()
    }
    set_mixer_state(model, mixers)
    name, layer = sorted(lora_layers(model).items())[0]
    x = torch.randn(2, 5, layer.in_features, generator=gen)
    with torch.no_grad():
        got = layer(x)
        g = torch.softmax(x @ mixers[f"mixer:{name}"].T, dim=-1)
        expected = layer.base_layer(x)
        for slot, adapter in enumerate((DEFAULT_ADAPTER, ROW_ADAPTER)):
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            expected = expected + g[..., slot : slot + 1] * (x @ a.T @ b.T) * layer.scaling[adapter]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert len(mixer_parameters(model)) == len(lora_layers(model))
    assert not any("mixer" in k for k in lora_state(model, DEFAULT_ADAPTER))  # peft never sees them
