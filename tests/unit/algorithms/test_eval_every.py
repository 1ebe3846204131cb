"""``eval.every = k``: which rounds are tested, for every timing, and that every algorithm's
messages carry that schedule (docs/algorithm.md#evaluation-timing)."""

from __future__ import annotations

import pytest

from fedamole.algorithms.base import RoundPlan, evaluated_round
from fedamole.algorithms.registry import algorithm_names
from fedamole.config import ConfigError
from fedamole.engines.common import last_round

R = 5
# (every, test_init) -> (rounds 0..R+1 that test the personalized model, rounds that test the
# received model), written by hand for R = 5 and eval.timing = "both". The received model of
# round r is the global model of round r-1: tested iff round r-1 is an evaluated round.
SCHEDULE = {
    (1, True): ({0, 1, 2, 3, 4, 5}, {1, 2, 3, 4, 5, 6}),
    (1, False): ({1, 2, 3, 4, 5}, {2, 3, 4, 5, 6}),
    (2, True): ({0, 2, 4, 5}, {1, 3, 5, 6}),
    (2, False): ({2, 4, 5}, {3, 5, 6}),
    (3, True): ({0, 3, 5}, {1, 4, 6}),
    (3, False): ({3, 5}, {4, 6}),
    (5, True): ({0, 5}, {1, 6}),
    (7, False): ({5}, {6}),  # every > R: only the last round
}


def _cfg(smoke, every: int, test_init: bool, timing: str = "both", algorithm: str = "fedit"):
    return smoke.replace(
        **{
            "federation.algorithm": algorithm,
            "federation.rounds": R,
            "eval.timing": timing,
            "eval.every": every,
            "eval.test_init": test_init,
        }
    )


def _rounds(plans: dict[int, RoundPlan]) -> tuple[set[int], set[int]]:
    personalized = {r for r, p in plans.items() if p.eval_personalized}
    received = {r for r, p in plans.items() if p.eval_received}
    return personalized, received


@pytest.mark.parametrize(("every", "test_init"), sorted(SCHEDULE))
def test_schedule_is_the_hand_written_table(smoke, every, test_init):
    personalized, received = SCHEDULE[every, test_init]
    both = _cfg(smoke, every, test_init)
    plans = {r: RoundPlan.for_round(both, r) for r in range(R + 2)}
    assert _rounds(plans) == (personalized, received)
    assert {r for r in range(R + 1) if evaluated_round(both, r)} == personalized
    # the other timings test the same rounds, each only its own model
    others = {"personalized": (personalized, set()), "global": (set(), received)}
    for timing, expected in others.items():
        cfg = _cfg(smoke, every, test_init, timing)
        assert _rounds({r: RoundPlan.for_round(cfg, r) for r in range(R + 2)}) == expected
    # training never depends on the schedule
    assert {r for r, p in plans.items() if p.train and p.upload} == set(range(1, R + 1))


def test_the_evaluation_only_round_always_tests_the_last_global_model(smoke):
    for every in (1, 2, 3, 4, 5, 6, 100):
        plan = RoundPlan.for_round(_cfg(smoke, every, False, "global"), R + 1)
        assert plan.eval_received and plan.active and not plan.train


@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_sends_the_schedule(make_algo, name):
    """Whatever plan an algorithm builds (FedAMoLE its own), its messages say to test exactly the
    rounds of the table; every client gets the same plan but for FedPTuning's relay flags."""
    timing = "personalized" if name == "fedamole" else "both"
    overrides = {"federation.rounds": R, "eval.timing": timing, "eval.every": 2}
    algo, _, _ = make_algo(name, **overrides)
    personalized, received = SCHEDULE[2, True]
    if timing == "personalized":
        received = set()
    got_personalized, got_received = set(), set()
    for rnd in range(last_round(algo.cfg) + 1):
        plans = [RoundPlan.from_config(m.config) for m in algo.configure_round(rnd).values()]
        if any(p.eval_personalized for p in plans):
            assert all(p.eval_personalized for p in plans), rnd
            got_personalized.add(rnd)
        if any(p.eval_received for p in plans):
            assert all(p.eval_received for p in plans), rnd
            got_received.add(rnd)
    assert (got_personalized, got_received) == (personalized, received)


def test_every_must_be_positive(smoke):
    with pytest.raises(ConfigError, match="every"):
        smoke.replace(**{"eval.every": 0})
