"""RSEA diagnostics, the retention variant and the oracle policy (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest

from fedamole.federated.assignment import Assignment, AssignmentPolicy, affinity
from fedamole.federated.groups import assignment_diagnostics, client_groups, oracle_scores

# 4 clients in two related pairs (0, 1) and (2, 3); 4 experts, 2 holders each.
CATEGORIES = [{"a"}, {"a"}, {"b"}, {"b", "c"}]
IN_PAIRS = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
ACROSS = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]], dtype=bool)


def test_group_purity_and_its_chance_level_hand_computed():
    pure = assignment_diagnostics(Assignment({"m": IN_PAIRS}), categories=CATEGORIES)
    assert pure == {"group_purity": 1.0, "group_purity_chance": pytest.approx(2 / 6)}
    mixed = Assignment({"m": IN_PAIRS, "n": ACROSS})  # 4 related + 4 unrelated holder pairs
    assert assignment_diagnostics(mixed, categories=CATEGORIES)["group_purity"] == 0.5


def test_chance_level_is_the_mean_purity_of_random_feasible_assignments():
    policy = AssignmentPolicy("random", 4, 4, per_expert=2, min_per_client=1, max_per_client=3)
    rng = np.random.default_rng(0)
    draws = [
        assignment_diagnostics(policy.initial(["m"], rng=rng), categories=CATEGORIES)[
            "group_purity"
        ]
        for _ in range(400)
    ]
    assert np.mean(draws) == pytest.approx(2 / 6, abs=0.03)


def test_retention_and_affinity_spread_hand_computed():
    found = assignment_diagnostics(
        Assignment({"m": ACROSS}),
        previous=Assignment({"m": IN_PAIRS}),
        affinities={"m": np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])},
    )
    # Kept pairs: expert 0 keeps client 0, 1 keeps 3, 2 keeps 0, 3 keeps 3: 4 of 8.
    assert found == {"affinity_spread": pytest.approx((0.6 + 0.0) / 2), "retention": 0.5}
    same = assignment_diagnostics(Assignment({"m": IN_PAIRS}), previous=Assignment({"m": IN_PAIRS}))
    assert same == {"retention": 1.0}


def _rsea(retention):
    return AssignmentPolicy(
        "rsea", 4, 4, per_expert=2, min_per_client=1, max_per_client=3, retention=retention
    )


def test_retention_zero_is_the_paper_rule_and_a_large_one_keeps_the_assignment():
    rng = np.random.default_rng(3)
    previous = Assignment({"m": IN_PAIRS, "n": ACROSS})
    affinities = {m: affinity(rng.normal(size=(4, 8)), rng.normal(size=(4, 8))) for m in "mn"}
    paper = AssignmentPolicy("rsea", 4, 4, per_expert=2, min_per_client=1, max_per_client=3)
    expected = paper.next(previous, rng=rng, affinities=affinities)
    assert _rsea(0.0).next(previous, rng=rng, affinities=affinities) == expected
    assert expected != previous  # so keeping it below is the retention's doing
    assert _rsea(10.0).next(previous, rng=rng, affinities=affinities) == previous
    with pytest.raises(ValueError, match="retention"):
        _rsea(-1.0)


def test_oracle_is_feasible_and_group_aligned():
    groups = client_groups(CATEGORIES)
    assert groups == [[0, 1], [2, 3]]
    assert client_groups([{"x"}, {"y"}, {"x", "y"}, {"z"}]) == [[0, 1, 2], [3]]
    policy = AssignmentPolicy("oracle", 6, 4, per_expert=2, min_per_client=2, max_per_client=4)
    got = policy.initial(["m", "n"], rng=np.random.default_rng(0), groups=groups)
    for held in got.modules.values():
        assert not Assignment({"m": held}).violations(
            per_expert=2, min_per_client=2, max_per_client=4
        )
    found = assignment_diagnostics(got, categories=CATEGORIES)
    assert found["group_purity"] == 1.0
    assert got.modules["m"][:, [0, 1]].sum() == got.modules["m"][:, [2, 3]].sum()  # even spread
    assert policy.next(got, rng=np.random.default_rng(1)) == got  # kept
    with pytest.raises(ValueError, match="client groups"):
        policy.initial(["m"], rng=np.random.default_rng(0))
    assert oracle_scores(3, 4, [[0, 1], [2, 3]]).tolist() == [
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [1, 1, 0, 0],
    ]
