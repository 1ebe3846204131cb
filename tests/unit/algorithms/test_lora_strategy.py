"""Server side of the LoRA strategies: round plans, dispatch, hand-computed aggregation, rejection,
state round trip; and the registry."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms import ALGORITHMS, get_algorithm
from fedamole.algorithms.base import RoundPlan
from fedamole.federated.messages import ClientMessage

KEY_A = "lora_A:model.layers.0.self_attn.q_proj"
KEY_B = "lora_B:model.layers.1.self_attn.v_proj"
MINE = ("local", "fedit", "ffa_lora", "fedsa_lora", "feddpa")


def _uploads(algo, parts, values, counts=(10, 10, 10)):
    """One message per client whose every shared tensor is filled with ``values[c]``."""
    shared = {k: v for k, v in algo.global_state.items() if k.split(":", 1)[0] in parts}
    return {
        c: ClientMessage(
            1, c, {k: torch.full_like(v, val) for k, v in shared.items()}, {"num_examples": n}, {}
        )
        for c, (val, n) in enumerate(zip(values, counts, strict=True))
    }


@pytest.mark.parametrize("name", MINE)
def test_registry_names_match_classes(name):
    cls = get_algorithm(name)
    assert name in ALGORITHMS and cls.name == name


@pytest.mark.parametrize(
    ("timing", "rnd", "expected"),
    [
        ("personalized", 0, (False, False, True, False)),
        ("personalized", 1, (True, True, True, False)),
        ("personalized", 2, (True, True, True, False)),
        ("global", 0, (False, False, False, False)),
        ("global", 1, (True, True, False, True)),
        ("global", 3, (False, False, False, True)),
        ("both", 0, (False, False, True, False)),
        ("both", 2, (True, True, True, True)),
        ("both", 3, (False, False, False, True)),
    ],
)
def test_round_plan(smoke, timing, rnd, expected):
    cfg = smoke.replace(**{"eval.timing": timing, "federation.algorithm": "fedit"})
    plan = RoundPlan.for_round(cfg, rnd)  # 2 rounds
    got = (plan.train, plan.upload, plan.eval_personalized, plan.eval_received)
    assert got == expected


def test_round_one_does_not_evaluate_the_initial_model_without_test_init(smoke):
    cfg = smoke.replace(
        **{"eval.timing": "global", "eval.test_init": False, "federation.algorithm": "fedit"}
    )
    assert not RoundPlan.for_round(cfg, 1).eval_received
    assert RoundPlan.for_round(cfg, 2).eval_received


def test_fedit_average_is_the_hand_computed_mean(make_algo):
    algo, _, _ = make_algo("fedit")
    summary = algo.aggregate(1, _uploads(algo, ("lora_A", "lora_B"), (1.0, 2.0, 6.0)))
    assert summary.accepted == (0, 1, 2) and not summary.rejected
    assert torch.all(algo.global_state[KEY_A] == 3.0) and torch.all(algo.global_state[KEY_B] == 3.0)


def test_fedit_example_weighting(make_algo):
    algo, _, _ = make_algo("fedit", **{"federation.weighting": "examples"})
    algo.aggregate(1, _uploads(algo, ("lora_A", "lora_B"), (1.0, 2.0, 6.0), counts=(1, 1, 2)))
    torch.testing.assert_close(algo.global_state[KEY_A], torch.full((8, 32), 15 / 4))


def test_nan_and_misshapen_updates_are_rejected_and_left_out(make_algo):
    algo, _, _ = make_algo("fedit")
    updates = _uploads(algo, ("lora_A", "lora_B"), (1.0, 2.0, 4.0))
    nan = dict(updates[0].tensors)
    nan[KEY_B] = nan[KEY_B].clone()
    nan[KEY_B][0, 0] = float("nan")
    updates[0] = ClientMessage(1, 0, nan, {"num_examples": 10}, {})
    bad = dict(updates[1].tensors)
    bad[KEY_A] = torch.zeros(4, 32)
    updates[1] = ClientMessage(1, 1, bad, {"num_examples": 10}, {})
    summary = algo.aggregate(1, updates)
    assert summary.accepted == (2,)
    assert "NaN" in summary.rejected[0] and "shape" in summary.rejected[1]
    assert torch.all(algo.global_state[KEY_A] == 4.0)


def test_nothing_is_averaged_outside_training_rounds(make_algo):
    algo, _, _ = make_algo("fedit")
    before = {k: v.clone() for k, v in algo.global_state.items()}
    assert len(algo.configure_round(0)[0].tensors) == 8  # the initial broadcast
    summary = algo.aggregate(
        0, {c: ClientMessage(0, c, {}, {"num_examples": 1}, {}) for c in range(3)}
    )
    assert summary.accepted == (0, 1, 2)
    assert all(torch.equal(before[k], v) for k, v in algo.global_state.items())
    assert algo.configure_round(1)[0].tensors == {}  # after round 0's broadcast nothing changed


@pytest.mark.parametrize(
    ("name", "later"),
    [("fedit", {"lora_A", "lora_B"}), ("ffa_lora", {"lora_B"}), ("fedsa_lora", {"lora_A"})],
)
def test_first_dispatch_is_the_full_init_then_only_shared_parts(make_algo, name, later):
    algo, _, _ = make_algo(name)
    first = algo.configure_round(0)
    assert {k.split(":")[0] for k in first[2].tensors} == {"lora_A", "lora_B"}
    assert all(torch.equal(first[0].tensors[k], first[2].tensors[k]) for k in first[0].tensors)
    assert algo.configure_round(1)[1].tensors == {}
    algo.aggregate(1, _uploads(algo, later, (1.0, 1.0, 1.0)))
    assert {k.split(":")[0] for k in algo.configure_round(2)[0].tensors} == later


def test_ffa_and_fedsa_reject_the_unshared_half(make_algo):
    for name, wrong in (("ffa_lora", "lora_A"), ("fedsa_lora", "lora_B")):
        algo, _, _ = make_algo(name)
        summary = algo.aggregate(1, _uploads(algo, ("lora_A", "lora_B"), (1.0, 1.0, 1.0)))
        assert set(summary.rejected) == {0, 1, 2}
        assert all(
            f"{wrong}:" in reason and "unexpected" in reason for reason in summary.rejected.values()
        )


def test_local_only_sends_nothing(make_algo):
    algo, _, _ = make_algo("local")
    assert all(m.tensors == {} for rnd in (0, 1, 2) for m in algo.configure_round(rnd).values())


def test_state_dict_round_trip(make_algo):
    algo, _, _ = make_algo("fedsa_lora")
    algo.configure_round(0)
    algo.aggregate(1, _uploads(algo, ("lora_A",), (1.0, 2.0, 3.0)))
    other, _, _ = make_algo("fedsa_lora")
    other.load_state_dict(algo.state_dict())
    assert (other.initialized, other.dirty) == (True, True)
    assert all(torch.equal(other.global_state[k], v) for k, v in algo.global_state.items())
    assert other.configure_round(2)[0].tensors.keys() == algo.configure_round(2)[0].tensors.keys()
