"""solve_assignment: every constraint, exact optimality, determinism, tie-break, both back-ends."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from fedamole.federated import bmatching
from fedamole.federated.assignment import affinity, solve_assignment

BACKENDS = ["flow", "lp"]


def _feasible(x: np.ndarray, k: int, lo: int, hi: int) -> bool:
    cols = x.sum(axis=0)
    return (
        x.dtype == bool and (x.sum(axis=1) == k).all() and (cols >= lo).all() and (cols <= hi).all()
    )


def _brute_force(p: np.ndarray, k: int, lo: int, hi: int) -> list[tuple[float, int, np.ndarray]]:
    """Every feasible X with (objective, tie-break score), enumerating each expert's k-subset."""
    e, n = p.shape
    tie = (e - np.arange(e))[:, None] * (n - np.arange(n))[None, :]
    out = []
    for rows in itertools.product(itertools.combinations(range(n), k), repeat=e):
        x = np.zeros((e, n), dtype=bool)
        for i, cols in enumerate(rows):
            x[i, list(cols)] = True
        if _feasible(x, k, lo, hi):
            out.append((float((p * x).sum()), int((tie * x).sum()), x))
    return out


def _milp_objective(p: np.ndarray, k: int, lo: int, hi: int) -> float:
    e, n = p.shape
    a_row = np.kron(np.eye(e), np.ones(n))  # (E, E*N)
    a_col = np.kron(np.ones(e), np.eye(n))  # (N, E*N)
    res = milp(
        -p.ravel(),
        integrality=np.ones(e * n),
        bounds=Bounds(0, 1),
        constraints=[LinearConstraint(a_row, k, k), LinearConstraint(a_col, lo, hi)],
        options={"mip_rel_gap": 0.0},
    )
    assert res.success
    return float((p.ravel() * np.rint(res.x)).sum())


def _random_affinity(rng: np.random.Generator, e: int, n: int, r: int = 8) -> np.ndarray:
    return affinity(rng.normal(size=(e, r)), rng.normal(size=(n, r)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force_on_small_random_instances(backend: str) -> None:
    rng = np.random.default_rng(0)
    for e, n, k, lo, hi in [(4, 3, 2, 2, 3), (5, 4, 2, 2, 3), (3, 3, 1, 1, 1), (5, 3, 2, 1, 5)]:
        for _ in range(4):
            p = rng.random((e, n))
            x = solve_assignment(
                p, per_expert=k, min_per_client=lo, max_per_client=hi, backend=backend
            )
            best = max(obj for obj, _, _ in _brute_force(p, k, lo, hi))
            assert _feasible(x, k, lo, hi)
            assert (p * x).sum() == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("e", "n"), [(30, 10), (60, 20)])
def test_matches_milp_objective_at_paper_scale(backend: str, e: int, n: int) -> None:
    rng = np.random.default_rng(e)
    for _ in range(3):
        p = _random_affinity(rng, e, n)
        x = solve_assignment(p, per_expert=2, min_per_client=2, max_per_client=8, backend=backend)
        assert _feasible(x, 2, 2, 8)
        assert abs((p * x).sum() - _milp_objective(p, 2, 2, 8)) <= 1e-9


def test_backends_return_identical_assignments() -> None:
    rng = np.random.default_rng(1)
    for e, n in [(30, 10), (45, 15), (12, 12)]:
        p = _random_affinity(rng, e, n)
        kw = {"per_expert": 2, "min_per_client": 2, "max_per_client": 8}
        flow = solve_assignment(p, backend="flow", **kw)
        np.testing.assert_array_equal(flow, solve_assignment(p, backend="lp", **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_follow_the_documented_rule(backend: str) -> None:
    # Integer affinities create many exact ties; the answer must be the unique maximizer of
    # (objective, sum X * (E - e) * (N - c)) whenever brute force finds it unique.
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(12):
        p = rng.integers(0, 2, size=(4, 3)).astype(float)
        sols = _brute_force(p, 2, 2, 3)
        key = max((obj, tie) for obj, tie, _ in sols)
        best = [x for obj, tie, x in sols if (obj, tie) == key]
        if len(best) != 1:
            continue
        x = solve_assignment(p, per_expert=2, min_per_client=2, max_per_client=3, backend=backend)
        np.testing.assert_array_equal(x, best[0])
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_equal_affinity_gives_the_documented_staircase(backend: str) -> None:
    x = solve_assignment(
        np.full((30, 10), 0.1), per_expert=2, min_per_client=2, max_per_client=8, backend=backend
    )
    # Lower clients take the most experts (8, 8, ...), the rest the minimum.
    assert x.sum(axis=0).tolist() == [8, 8, 8, 8, 8, 8, 6, 2, 2, 2]
    assert x[0].nonzero()[0].tolist() == [0, 1]  # expert 0 goes to clients 0 and 1
    again = solve_assignment(
        np.full((30, 10), 0.1), per_expert=2, min_per_client=2, max_per_client=8, backend=backend
    )
    np.testing.assert_array_equal(x, again)


def test_same_input_same_output() -> None:
    p = _random_affinity(np.random.default_rng(3), 30, 10)
    kw = {"per_expert": 2, "min_per_client": 2, "max_per_client": 8}
    first = solve_assignment(p, **kw)
    for _ in range(3):
        np.testing.assert_array_equal(solve_assignment(p.copy(), **kw), first)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(2, 3), st.data())
def test_property_integer_ties_follow_the_rule(e: int, n: int, data: st.DataObject) -> None:
    # Integer affinities (exact after the power-of-two quantization) with a spread of bounds.
    k = data.draw(st.integers(1, n))
    lo = data.draw(st.integers(0, e * k // n))
    hi = data.draw(st.integers(max(lo, -(-e * k // n)), e))
    p = np.array(data.draw(st.lists(st.integers(0, 3), min_size=e * n, max_size=e * n)), float)
    p = p.reshape(e, n)
    sols = _brute_force(p, k, lo, hi)
    key = max((obj, tie) for obj, tie, _ in sols)
    best = [x for obj, tie, x in sols if (obj, tie) == key]
    for backend in BACKENDS:
        x = solve_assignment(p, per_expert=k, min_per_client=lo, max_per_client=hi, backend=backend)
        assert (p * x).sum() == key[0]
        if len(best) == 1:
            np.testing.assert_array_equal(x, best[0])


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 3),
    st.data(),
)
def test_property_optimal_and_feasible(e: int, n: int, k: int, data: st.DataObject) -> None:
    k = min(k, n)
    lo = data.draw(st.integers(0, e * k // n))
    hi = data.draw(st.integers(max(lo, -(-e * k // n)), e + 1))
    values = st.one_of(st.integers(0, 3).map(float), st.floats(-5, 5, allow_nan=False))
    p = np.array(data.draw(st.lists(values, min_size=e * n, max_size=e * n))).reshape(e, n)
    best = max(obj for obj, _, _ in _brute_force(p, k, lo, hi))
    for backend in BACKENDS:
        x = solve_assignment(p, per_expert=k, min_per_client=lo, max_per_client=hi, backend=backend)
        assert _feasible(x, k, lo, hi)
        assert (p * x).sum() == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize(
    ("shape", "k", "lo", "hi", "match"),
    [
        ((30, 10), 2, 7, 8, "min_per_client\\*num_clients"),
        ((30, 10), 2, 2, 5, "max_per_client\\*num_clients"),
        ((30, 10), 11, 2, 80, "per_expert"),
        ((30, 10), 2, 5, 3, "min_per_client"),
        ((30,), 2, 2, 8, "non-empty numeric"),
    ],
)
def test_infeasible_or_malformed_problems_raise(
    shape: tuple[int, ...], k: int, lo: int, hi: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        solve_assignment(np.ones(shape), per_expert=k, min_per_client=lo, max_per_client=hi)


def test_non_finite_affinity_raises() -> None:
    p = np.ones((30, 10))
    p[3, 4] = np.nan
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        solve_assignment(p, per_expert=2, min_per_client=2, max_per_client=8)


def test_auto_falls_back_to_lp_without_ortools(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _random_affinity(np.random.default_rng(4), 30, 10)
    kw = {"per_expert": 2, "min_per_client": 2, "max_per_client": 8}
    with_flow = solve_assignment(p, backend="auto", **kw)
    monkeypatch.setattr(bmatching, "_ortools_flow", lambda: None)
    assert not bmatching.have_ortools()
    np.testing.assert_array_equal(solve_assignment(p, backend="auto", **kw), with_flow)
    with pytest.raises(ValueError, match="needs ortools"):
        solve_assignment(p, backend="flow", **kw)


def test_certify_repairs_a_suboptimal_answer() -> None:
    # The LP back-end's answer is polished by negative-cycle cancelling; feed it a bad one.
    rng = np.random.default_rng(5)
    for _ in range(5):
        p = _random_affinity(rng, 12, 4)
        q = bmatching._quantize(p, 40)
        lo, hi = np.full(4, 2), np.full(4, 8)
        x = solve_assignment(-p, per_expert=2, min_per_client=2, max_per_client=8)  # the worst
        allowed = np.ones_like(x)
        fixed, _ = bmatching._certify(q, x, allowed, lo, hi)
        best = solve_assignment(p, per_expert=2, min_per_client=2, max_per_client=8)
        assert _feasible(fixed, 2, 2, 8)
        assert (q * fixed).sum() == (q * best).sum()


def test_scale_invariance_and_row_shift_invariance() -> None:
    p = _random_affinity(np.random.default_rng(6), 30, 10)
    kw = {"per_expert": 2, "min_per_client": 2, "max_per_client": 8}
    x = solve_assignment(p, **kw)
    shifted = p * 1e6 + np.arange(30)[:, None] * 3.0  # each row takes exactly k entries
    np.testing.assert_array_equal(solve_assignment(shifted, **kw), x)
