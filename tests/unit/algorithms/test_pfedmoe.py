"""pFedMoE (docs/algorithm.md#pfedmoe): the server averages the shared expert over all clients (a
hand computation), the gate mixes the two experts per token (against the gated sum by hand), and a
client trains both experts and its gate but uploads the shared expert only."""

from __future__ import annotations

import dataclasses

import torch

from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.fedalt import MIXER, set_mixer_state
from fedamole.algorithms.lora_common import DEFAULT_ADAPTER, lora_layers, lora_state, set_lora_state
from fedamole.algorithms.pfedmoe import LOCAL_EXPERT
from fedamole.data import load_federated_data
from fedamole.federated.messages import ClientMessage

KEY = "lora_B:model.layers.0.self_attn.q_proj"


def test_the_server_averages_the_shared_expert_over_all_clients(make_algo):
    algo, _, _ = make_algo("pfedmoe", **{"federation.num_clients": 4})
    first = algo.configure_round(1)
    assert all(set(m.tensors) == set(algo.global_state) for m in first.values())  # the init

    def replies(values):
        return {
            c: ClientMessage(
                1, c, {k: torch.full_like(v, x) for k, v in algo.global_state.items()}, {}, {}
            )
            for c, x in values.items()
        }

    algo.aggregate(1, replies({0: 1.0, 1: 2.0, 2: 4.0}))  # client 3 absent
    sent = algo.configure_round(2)
    for c in range(4):  # by hand: (1 + 2 + 4) / 3 to everyone, A and B
        assert set(sent[c].tensors) == set(algo.global_state)
        torch.testing.assert_close(
            sent[c].tensors[KEY], torch.full_like(sent[c].tensors[KEY], 7 / 3)
        )


def test_the_gate_mixes_the_shared_and_local_experts_per_token(make_algo):
    _, model, _ = make_algo("pfedmoe")
    model.eval()
    gen = torch.Generator().manual_seed(0)
    for adapter in (DEFAULT_ADAPTER, LOCAL_EXPERT):
        state = {
            k: torch.randn(v.shape, generator=gen) for k, v in lora_state(model, adapter).items()
        }
        set_lora_state(model, state, adapter)
    gates = {
        f"mixer:{n}": torch.randn(2, m.in_features, generator=gen)
        for n, m in lora_layers(model).items()
    }
    set_mixer_state(model, gates)
    name, layer = sorted(lora_layers(model).items())[0]
    x = torch.randn(2, 5, layer.in_features, generator=gen)
    with torch.no_grad():
        g = torch.softmax(x @ gates[f"mixer:{name}"].T, dim=-1)  # (2, 5, 2)
        expected = layer.base_layer(x)
        for slot, adapter in enumerate((DEFAULT_ADAPTER, LOCAL_EXPERT)):
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            expected = expected + g[..., slot : slot + 1] * (x @ a.T @ b.T) * layer.scaling[adapter]
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_a_client_trains_both_experts_and_its_gate_and_uploads_the_shared_one(make_algo):
    algo, model, tokenizer = make_algo("pfedmoe")
    ctx = ClientContext(0, load_federated_data(algo.cfg).clients[0], model, tokenizer)
    msg = algo.configure_round(1)[0]
    train_only = {**msg.config, "eval_personalized": False, "eval_received": False}
    reply = algo.local_update(1, dataclasses.replace(msg, config=train_only), ctx)
    assert set(reply.tensors) == set(algo.global_state)  # the shared expert, A and B
    assert all(torch.equal(reply.tensors[k], v) for k, v in ctx.state["lora"].items())
    assert ctx.state["lora"][KEY].any() and ctx.state["lora_local"][KEY].any()  # both trained
    assert not torch.equal(ctx.state["lora"][KEY], ctx.state["lora_local"][KEY])
    assert all(v.any() for v in ctx.state["gate"].values())  # the gate left zero
    assert hasattr(model, MIXER)
