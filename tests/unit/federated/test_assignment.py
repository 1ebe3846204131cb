"""Affinity, the Assignment record and the round policies (docs/algorithm.md#rsea)."""

from __future__ import annotations

import json
import math
import pickle
import typing

import numpy as np
import pytest

from fedamole.config import FederationConfig
from fedamole.federated.assignment import (
    POLICIES,
    Assignment,
    AssignmentPolicy,
    affinity,
    homogeneous_bounds,
    random_assignment,
    solve_assignment,
)

MODULES = ["layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj"]


def test_affinity_is_a_softmax_over_clients_per_expert() -> None:
    rng = np.random.default_rng(0)
    h, q = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    p = affinity(h, q)
    naive = np.array(
        [[math.exp(h[e] @ q[c] / math.sqrt(8)) for c in range(3)] for e in range(5)]
    )  # (E, N)
    np.testing.assert_allclose(p, naive / naive.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_affinity_is_stable_for_huge_scores() -> None:
    h = np.array([[1e4, 0.0], [-1e4, 0.0]])
    q = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    p = affinity(h, q)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(p[1], [0.0, 1.0, 0.0])


@pytest.mark.parametrize(("h", "q"), [((4, 8), (3, 4)), ((4,), (3, 8)), ((4, 8), (3, 8, 1))])
def test_affinity_rejects_bad_shapes(h: tuple[int, ...], q: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expert_emb"):
        affinity(np.ones(h), np.ones(q))


def test_affinity_rejects_non_finite() -> None:
    h = np.ones((4, 8))
    h[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        affinity(h, np.ones((3, 8)))


def test_random_assignment_is_feasible_and_seeded() -> None:
    kw = {"per_expert": 2, "min_per_client": 2, "max_per_client": 8}
    a = random_assignment(30, 10, rng=np.random.default_rng(7), **kw)
    b = random_assignment(30, 10, rng=np.random.default_rng(7), **kw)
    c = random_assignment(30, 10, rng=np.random.default_rng(8), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert Assignment({"m": a}).violations(**kw) == []


def test_homogeneous_bounds() -> None:
    assert homogeneous_bounds(30, 10, 2) == (6, 6)  # the reference's floor(E k / N)
    assert homogeneous_bounds(31, 10, 2) == (6, 7)  # the reference would be infeasible here
    with pytest.raises(ValueError, match="without experts"):
        homogeneous_bounds(4, 10, 2)


def test_homogeneous_policy_gives_equal_counts() -> None:
    policy = AssignmentPolicy("static", 31, 10, homogeneous=True)
    counts = policy.initial(MODULES, rng=np.random.default_rng(0)).counts()
    assert set(np.unique(counts)) <= {6, 7}
    np.testing.assert_array_equal(counts.sum(axis=0), 62)


def test_policy_names_match_the_config_literal() -> None:
    annotation = FederationConfig.model_fields["assignment"].annotation
    assert set(POLICIES) == set(typing.get_args(annotation))


def test_policy_rejects_infeasible_bounds_and_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="max_per_client\\*num_clients"):
        AssignmentPolicy("rsea", 30, 10, max_per_client=5)
    with pytest.raises(ValueError, match="unknown assignment policy"):
        AssignmentPolicy("greedy", 30, 10)  # type: ignore[arg-type]


def test_static_keeps_round_zero_and_random_redraws() -> None:
    rng = np.random.default_rng(0)
    static = AssignmentPolicy("static", 30, 10)
    first = static.initial(MODULES, rng=rng)
    assert static.next(first, rng=rng) is first
    assert not static.needs_embeddings
    random = AssignmentPolicy("random", 30, 10)
    second = random.next(first, rng=rng)
    assert second != first
    assert list(second.modules) == MODULES
    assert second.violations(per_expert=2, min_per_client=2, max_per_client=8) == []


def test_rsea_solves_each_module_on_its_affinity() -> None:
    rng = np.random.default_rng(1)
    policy = AssignmentPolicy("rsea", 30, 10)
    assert policy.needs_embeddings
    first = policy.initial(MODULES, rng=rng)
    aff = {m: affinity(rng.normal(size=(30, 8)), rng.normal(size=(10, 8))) for m in MODULES}
    nxt = policy.next(first, rng=rng, affinities=aff)
    for m in MODULES:
        expected = solve_assignment(aff[m], per_expert=2, min_per_client=2, max_per_client=8)
        np.testing.assert_array_equal(nxt.modules[m], expected)
    with pytest.raises(ValueError, match="missing"):
        policy.next(first, rng=rng, affinities={MODULES[0]: aff[MODULES[0]]})


def test_initial_is_reproducible_from_the_seed() -> None:
    policy = AssignmentPolicy("rsea", 30, 10)
    a = policy.initial(MODULES, rng=np.random.default_rng(3))
    b = policy.initial(MODULES, rng=np.random.default_rng(3))
    assert a == b
    assert a.modules[MODULES[0]].tolist() != a.modules[MODULES[1]].tolist()  # per-module draws


def test_assignment_json_round_trip_and_helpers() -> None:
    a = AssignmentPolicy("rsea", 30, 10).initial(MODULES, rng=np.random.default_rng(4))
    text = json.dumps(a.to_json())
    b = Assignment.from_json(json.loads(text))
    assert a == b
    assert list(b.modules) == MODULES
    held = a.held(3)
    for m in MODULES:
        np.testing.assert_array_equal(held[m], np.flatnonzero(a.modules[m][:, 3]))
        assert (np.diff(held[m]) > 0).all()
    assert a.counts().shape == (10, 3)
    assert pickle.loads(pickle.dumps(a)) == a  # checkpoints may pickle it
    np.testing.assert_array_equal(a.counts()[:, 1], a.modules[MODULES[1]].sum(axis=0))


def test_assignment_is_read_only_and_compares_by_value() -> None:
    x = np.zeros((4, 2), dtype=bool)
    x[:, 0] = True
    a = Assignment({"m": x})
    x[0, 0] = False  # the record holds its own copy
    assert a.modules["m"][0, 0]
    with pytest.raises(ValueError):
        a.modules["m"][0, 0] = False
    assert a == Assignment({"m": a.modules["m"]})
    assert a != Assignment({"m": ~a.modules["m"]})
    assert a != Assignment({"other": a.modules["m"]})


def test_violations_name_the_broken_constraint() -> None:
    x = np.zeros((3, 2), dtype=bool)
    x[:, 0] = True
    problems = Assignment({"m": x}).violations(per_expert=1, min_per_client=1, max_per_client=2)
    assert problems == [
        "m: client 0 holds 3 experts, outside [1, 2]",
        "m: client 1 holds 0 experts, outside [1, 2]",
    ]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"num_experts": 3}, "needs num_experts"),
        ({"num_experts": 3, "num_clients": 2, "modules": {"m": [[0]]}}, "1 clients"),
        ({"num_experts": 3, "num_clients": 1, "modules": {"m": [[0, 3]]}}, "not distinct"),
        ({"num_experts": 3, "num_clients": 1, "modules": {"m": [[1, 1]]}}, "not distinct"),
    ],
)
def test_from_json_rejects_malformed_records(data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Assignment.from_json(data)
