"""FedIT-clustered: FedIT averaged within the groups of clients whose categories overlap."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms import get_algorithm
from fedamole.federated.messages import ClientMessage
from fedamole.models import load_model_and_tokenizer

KEY_A = "lora_A:model.layers.0.self_attn.q_proj"
KEY_B = "lora_B:model.layers.1.self_attn.v_proj"
# clients 0 and 2 share "a"; 1 and 3 share "b" (via 3's {"b", "c"}); 4 is alone
CATEGORIES = [frozenset("a"), frozenset("b"), frozenset("a"), frozenset("bc"), frozenset("d")]


def _algo(smoke, **overrides):
    cfg = smoke.replace(
        **{"federation.algorithm": "fedit_clustered", "federation.num_clients": 5, **overrides}
    )
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("fedit_clustered")(cfg)
    model = algo.prepare_model(model)
    algo.observe_partition(CATEGORIES)
    algo.setup(model)
    return algo


def _uploads(algo, values, clients=range(5)):
    state = algo.group_states[0]
    return {
        c: ClientMessage(1, c, {k: torch.full_like(v, values[c]) for k, v in state.items()}, {}, {})
        for c in clients
    }


def test_averages_within_groups_only(smoke):
    algo = _algo(smoke)
    assert algo.groups == [[0, 2], [1, 3], [4]]
    start = algo.configure_round(0)
    assert all(torch.equal(start[0].tensors[k], start[4].tensors[k]) for k in start[0].tensors)
    summary = algo.aggregate(1, _uploads(algo, [1.0, 10.0, 3.0, 30.0, 7.0]))
    assert summary.accepted == (0, 1, 2, 3, 4)
    sent = algo.configure_round(2)
    # by hand: (1 + 3) / 2, (10 + 30) / 2, 7 alone
    for client, mean in ((0, 2.0), (2, 2.0), (1, 20.0), (3, 20.0), (4, 7.0)):
        assert torch.all(sent[client].tensors[KEY_A] == mean)
        assert torch.all(sent[client].tensors[KEY_B] == mean)


def test_a_group_without_replies_keeps_its_model_and_a_missed_client_gets_everything(smoke):
    algo = _algo(smoke)
    algo.configure_round(0)
    before = {k: v.clone() for k, v in algo.group_states[1].items()}
    algo.aggregate(1, _uploads(algo, [1.0, 0.0, 3.0, 0.0, 7.0], clients=(0, 2, 4)))
    assert all(torch.equal(before[k], v) for k, v in algo.group_states[1].items())
    assert torch.all(algo.group_states[0][KEY_A] == 2.0)
    sent = algo.configure_round(2)
    assert set(sent[1].tensors) == set(before)  # missed round 1: the whole adapter again


def test_state_round_trip_and_a_changed_partition_is_refused(smoke):
    algo = _algo(smoke)
    algo.configure_round(0)
    algo.aggregate(1, _uploads(algo, [1.0, 10.0, 3.0, 30.0, 7.0]))
    other = _algo(smoke)
    other.load_state_dict(algo.state_dict())
    assert torch.all(other.group_states[1][KEY_A] == 20.0)
    moved = _algo(smoke)
    moved.groups = [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="client groups"):
        moved.load_state_dict(algo.state_dict())


def test_setup_without_the_partition_says_so(smoke):
    cfg = smoke.replace(**{"federation.algorithm": "fedit_clustered"})
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("fedit_clustered")(cfg)
    with pytest.raises(RuntimeError, match="partition categories"):
        algo.setup(algo.prepare_model(model))
