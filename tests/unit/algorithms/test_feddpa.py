"""FedDPA: instance weights, the per-example combination, one client round."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.feddpa import MAX_WEIGHT, _combine, instance_weights
from fedamole.algorithms.lora_common import lora_state, set_lora_state
from fedamole.data import load_federated_data


@pytest.fixture
def client(make_algo):
    algo, model, tokenizer = make_algo(
        "feddpa",
        **{"train.steps": 1, "data.test_cap": 2, "data.eval_cap": 2, "eval.max_new_tokens": 2},
    )
    data = load_federated_data(algo.cfg)
    return algo, ClientContext(0, data.clients[0], model, tokenizer)


def _randomize(model, adapter, seed):
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in lora_state(model, adapter).items()
    }
    set_lora_state(model, state, adapter)


def test_combine_is_the_joint_evaluation():
    per_example = [
        {"accuracy": 1.0, "score": 1.0, "loss": 2.0, "num_examples": 1, "num_skipped": 0},
        {"rouge_l": 0.5, "score": 0.5, "loss": 1.0, "num_examples": 1, "num_skipped": 0},
        {"accuracy": 0.0, "score": 0.0, "loss": 4.0, "num_examples": 1, "num_skipped": 0},
        {"num_examples": 0, "num_skipped": 1},
    ]
    out = _combine(per_example, counts=[1, 3, 1, 0])
    assert out == {
        "num_examples": 3,
        "num_skipped": 1,
        "accuracy": 0.5,
        "rouge_l": 0.5,
        "score": 0.5,
        "loss": (2.0 + 3.0 + 4.0) / 5,
    }


def test_instance_weights_depend_on_the_local_adapter_only(client):
    algo, ctx = client
    _randomize(ctx.model, "local", 1)
    weights = instance_weights(ctx, algo.cfg, ctx.data.test)
    assert len(weights) == len(ctx.data.test)
    assert all(0.0 <= w <= MAX_WEIGHT for w in weights)
    _randomize(ctx.model, "default", 2)
    assert instance_weights(ctx, algo.cfg, ctx.data.test) == pytest.approx(weights, abs=1e-6)
    _randomize(ctx.model, "local", 3)
    assert instance_weights(ctx, algo.cfg, ctx.data.test) != pytest.approx(weights, abs=1e-6)


def test_a_round_trains_both_adapters_and_uploads_only_the_global_one(client):
    algo, ctx = client
    messages = algo.configure_round(1)
    reply = algo.local_update(1, messages[0], ctx)
    init_local = algo.private_init(ctx, "local")
    assert set(reply.tensors) == set(algo.global_state)  # the global adapter's keys only
    assert any(not torch.equal(reply.tensors[k], algo.global_state[k]) for k in reply.tensors)
    local = ctx.state["lora_local"]
    assert any(not torch.equal(local[k], init_local[k]) for k in local)
    assert {"train/loss", "train/local_loss", "test/mix_weight", "eval/loss"} <= set(reply.metrics)
