"""Exact, deterministic solver for the degree-bounded bipartite b-matching of RSEA
(docs/algorithm.md#solver).

The problem: choose ``X in {0,1}^{E x N}`` maximizing ``sum P * X`` with every row summing to
``k`` and every column sum in ``[lo, hi]``. Its constraint matrix is a bipartite incidence matrix,
hence totally unimodular, so a min-cost flow (or the LP relaxation) has integral optima.

**Network.** Experts supply ``k`` units each; arc ``expert -> client`` has capacity 1 and cost
``-q[e, c]``; each client demands ``lo`` units (its lower bound, moved into the node supply instead
of a big-M cost) and may pass ``hi - lo`` more to one sink, which demands the rest.

**Integer profits.** Both back-ends see ``q = rint((P - rowmin) * 2**(bits - x))`` with ``2**x`` the
power of two just above the largest shifted entry: subtracting a row's minimum leaves the optimum
unchanged (each row takes exactly ``k`` entries), and a power-of-two scale is exact, so integer or
other short-mantissa inputs keep their exact ties. ``bits`` is 48 for paper-scale problems and less
for huge ones (47 at N=1000, E=3000) so that ``max|cost| * (nodes + 1)`` fits int64 (OR-tools'
cost-scaling check). The answer is exactly optimal for ``q``; for the real-valued ``P`` it is
optimal to within ``E * k * 2**(x - bits)`` (<= 1e-10 for probabilities at N=1000, 2e-13 at paper
scale).

**Certificate.** The answer is checked in exact int64 arithmetic: Bellman-Ford on the residual graph
either yields node potentials (a dual certificate of optimality) or a negative cycle, which is
cancelled (this polishes the LP back-end, whose floating-point tolerances may stop a hair short).

**Tie-break (determinism).** The potentials also give the *optimal face*: an arc can change between
optimal answers iff its reduced cost is zero and both ends lie in one strongly connected component
of the zero-reduced-cost residual graph. If any can, a second solve over that face maximizes
``sum X[e, c] * (E - e) * (N - c)``: among equally good assignments, lower-numbered experts go to
lower-numbered clients and lower-numbered clients receive more experts. With continuous affinities
the optimum is almost surely unique and the second solve never runs. If the secondary objective
still ties (this needs coincident integer sums), the back-end's own deterministic choice decides;
both back-ends agree whenever the secondary optimum is unique.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from scipy.sparse.csgraph import connected_components

__all__ = ["Backend", "have_ortools", "solve_bmatching"]

log = logging.getLogger(__name__)

Backend = Literal["auto", "flow", "lp"]
_MAX_BITS = 48
_INF = np.int64(2**62)


@functools.cache
def _ortools_flow() -> Any:
    try:
        from ortools.graph.python import min_cost_flow
    except ImportError:
        log.info("ortools is not installed: RSEA uses the scipy HiGHS LP (slower, same answers)")
        return None
    return min_cost_flow


def have_ortools() -> bool:
    """Whether OR-tools' min-cost flow is importable (the fast ``"flow"`` back-end)."""
    return _ortools_flow() is not None


def solve_bmatching(
    profit: np.ndarray,
    *,
    row_sum: int,
    col_min: int,
    col_max: int,
    backend: Backend = "auto",
) -> np.ndarray:
    """Maximize ``sum(profit * X)`` over binary ``X`` with fixed row sums and bounded column sums.

    Inputs are assumed valid (``fedamole.federated.assignment.solve_assignment`` validates them).

    Args:
        profit: ``(E, N)`` finite float matrix.
        row_sum: ones per row (``k``).
        col_min: least ones per column.
        col_max: most ones per column.
        backend: ``"flow"`` (OR-tools min-cost flow), ``"lp"`` (scipy HiGHS LP) or ``"auto"``
            (flow when OR-tools is importable).

    Returns:
        ``(E, N)`` bool, an exact optimum with the module docstring's tie-break.
    """
    solve = _backend(backend)
    num_rows, num_cols = profit.shape
    q = _quantize(profit, _profit_bits(num_rows, num_cols, row_sum))  # (E, N) int64
    rows = np.full(num_rows, row_sum, dtype=np.int64)
    lo = np.full(num_cols, col_min, dtype=np.int64)
    hi = np.full(num_cols, col_max, dtype=np.int64)
    allowed = np.ones(q.shape, dtype=bool)
    x = solve(q, allowed, np.zeros(q.shape, dtype=bool), rows, lo, hi)
    x, pot = _certify(q, x, allowed, lo, hi)
    free, free_col = _optimal_face(q, x, allowed, lo, hi, pot)
    if not free.any():
        return x
    # Second stage over the optimal face: every answer there is optimal for q.
    e_idx, c_idx = np.arange(num_rows), np.arange(num_cols)
    tie = (num_rows - e_idx)[:, None] * (num_cols - c_idx)[None, :]  # (E, N) int64
    deg = x.sum(axis=0)
    lo2, hi2 = np.where(free_col, lo, deg), np.where(free_col, hi, deg)
    x = solve(tie, free, x, rows, lo2, hi2)
    if solve is _solve_lp:  # the flow answer is exact already; polish the LP's
        x, _ = _certify(tie, x, free, lo2, hi2)
    return x


def _backend(name: Backend) -> Any:
    if name == "auto":
        return _solve_flow if have_ortools() else _solve_lp
    if name == "flow":
        if not have_ortools():
            raise ValueError("backend 'flow' needs ortools (`pip install ortools`); or use 'lp'")
        return _solve_flow
    if name == "lp":
        return _solve_lp
    raise ValueError(f"unknown assignment backend {name!r}; choose 'auto', 'flow' or 'lp'")


def _profit_bits(num_rows: int, num_cols: int, row_sum: int) -> int:
    # Keep max|cost| * (nodes + 1) and the total cost E * k * max|cost| below 2**60.
    nodes = num_rows + num_cols + 1
    bits = min(_MAX_BITS, 60 - math.ceil(math.log2(max(nodes + 1, num_rows * row_sum, 2))))
    if bits < 24:
        raise ValueError(f"assignment problem {num_rows}x{num_cols} too large for int64 profits")
    return bits


def _quantize(profit: np.ndarray, bits: int) -> np.ndarray:
    shifted = profit - profit.min(axis=1, keepdims=True)  # (E, N), optimum unchanged
    span = float(shifted.max())
    if span == 0.0:
        return np.zeros(profit.shape, dtype=np.int64)
    # Scale by a power of two (exact in floating point) so that inputs with few significant bits,
    # such as integers, keep their exact ties; q <= 2**bits since span < 2**exponent.
    exponent = math.frexp(span)[1]
    return np.rint(np.ldexp(shifted, bits - exponent)).astype(np.int64)


def _reduced(
    rows: np.ndarray, allowed: np.ndarray, base: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The free sub-problem: arcs outside ``allowed`` stay at ``base``."""
    fixed = base & ~allowed
    supply = rows - fixed.sum(axis=1)  # (E,)
    taken = fixed.sum(axis=0)  # (N,)
    return supply, np.maximum(lo - taken, 0), hi - taken, fixed


def _arcs(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices ``(m,)`` of the allowed arcs, row-major."""
    if allowed.all():  # stage one: skip a full nonzero scan
        num_rows, num_cols = allowed.shape
        return np.repeat(np.arange(num_rows), num_cols), np.tile(np.arange(num_cols), num_rows)
    return np.nonzero(allowed)


def _solve_flow(
    q: np.ndarray,
    allowed: np.ndarray,
    base: np.ndarray,
    rows: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    mcf = _ortools_flow()
    num_rows, num_cols = q.shape
    supply, lo_r, hi_r, x = _reduced(rows, allowed, base, lo, hi)
    e_idx, c_idx = _arcs(allowed)
    cost = -q.ravel() if e_idx.size == q.size else -q[e_idx, c_idx]
    cols = np.arange(num_cols)
    sink = num_rows + num_cols
    flow = mcf.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(
        np.concatenate([e_idx, num_rows + cols]),
        np.concatenate([num_rows + c_idx, np.full(num_cols, sink)]),
        np.concatenate([np.ones(e_idx.size, dtype=np.int64), hi_r - lo_r]),
        np.concatenate([cost, np.zeros(num_cols, dtype=np.int64)]),
    )
    flow.set_nodes_supplies(
        np.arange(sink + 1), np.concatenate([supply, -lo_r, [lo_r.sum() - supply.sum()]])
    )
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise RuntimeError(f"min-cost flow failed with status {status!r} on a validated problem")
    taken = flow.flows(np.arange(e_idx.size)) > 0
    if e_idx.size == q.size:
        return taken.reshape(q.shape)
    x = x.copy()
    x[e_idx, c_idx] = taken
    return x


def _solve_lp(
    q: np.ndarray,
    allowed: np.ndarray,
    base: np.ndarray,
    rows: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    num_rows, num_cols = q.shape
    supply, lo_r, hi_r, x = _reduced(rows, allowed, base, lo, hi)
    e_idx, c_idx = _arcs(allowed)
    m = e_idx.size
    arcs, ones = np.arange(m), np.ones(m)
    # Variables: the m arcs, then one degree per client bounded by [lo, hi]; all rows equalities.
    a_row = sparse.hstack(  # (E, m + N): arcs of each expert sum to its supply
        [
            sparse.csr_array((ones, (e_idx, arcs)), shape=(num_rows, m)),
            sparse.csr_array((num_rows, num_cols)),
        ]
    )
    a_col = sparse.hstack(  # (N, m + N): arcs of each client minus its degree equal 0
        [sparse.csr_array((ones, (c_idx, arcs)), shape=(num_cols, m)), -sparse.eye_array(num_cols)]
    )
    cost = np.concatenate([-q[e_idx, c_idx].astype(np.float64), np.zeros(num_cols)])
    scale = max(1.0, float(np.abs(cost).max(initial=0.0)))
    bounds = np.zeros((m + num_cols, 2))
    bounds[:m, 1] = 1.0
    bounds[m:, 0], bounds[m:, 1] = lo_r, hi_r
    res = linprog(
        cost / scale,
        A_eq=sparse.vstack([a_row, a_col]),
        b_eq=np.concatenate([supply, np.zeros(num_cols)]),
        bounds=bounds,
        method="highs-ds",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0 or np.abs(res.x - np.rint(res.x)).max(initial=0.0) > 1e-6:
        raise RuntimeError(f"HiGHS LP failed on a validated problem: {res.message}")
    x = x.copy()
    x[e_idx, c_idx] = res.x[:m] > 0.5
    return x


def _certify(
    q: np.ndarray, x: np.ndarray, allowed: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.int64]]:
    """Return ``x`` made exactly optimal for ``q`` and its dual potentials."""
    assert (x.sum(axis=0) >= lo).all() and (x.sum(axis=0) <= hi).all(), "infeasible answer"
    for _ in range(10 * x.size):  # each cancelled cycle lowers the integer cost; LP answers
        pot, _ = _bellman_ford(q, x, allowed, lo, hi, track=False)  # are off by a hair at most
        if pot is not None:
            return x, pot
        _, cycle = _bellman_ford(q, x, allowed, lo, hi, track=True)
        assert cycle is not None
        x = _cancel(x, cycle)
    raise RuntimeError("negative-cycle cancelling did not terminate")  # pragma: no cover


def _bellman_ford(
    q: np.ndarray,
    x: np.ndarray,
    allowed: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    track: bool,
) -> tuple[tuple[np.ndarray, np.ndarray, np.int64] | None, list[int] | None]:
    """Shortest distances from a virtual root in the residual graph (min-cost form, cost -q).

    Nodes: experts ``0..E-1``, clients ``E..E+N-1``, the sink ``E+N``; the root has a 0-cost arc
    to each. Returns ``(potentials, None)`` when the passes converge (``x`` is optimal), else
    ``(None, cycle)``: with ``track``, the node list of a negative cycle in arc order (when a pass
    after the ``nodes``-th still improves a distance, that improvement closes a cycle of the
    predecessor graph, since every distance already equals its best simple-path cost).
    """
    num_rows, num_cols = q.shape
    sink, nodes = num_rows + num_cols, num_rows + num_cols + 1
    deg = x.sum(axis=0)
    up, down = deg < hi, deg > lo  # (N,) client -> sink / sink -> client residual arcs
    fwd = np.where(allowed & ~x, -q, _INF)  # (E, N) cost of expert -> client
    bwd = np.where(allowed & x, q, _INF)  # (E, N) cost of client -> expert
    d_e, d_c, d_t = np.zeros(num_rows, np.int64), np.zeros(num_cols, np.int64), np.int64(0)
    pred = np.full(nodes, -1, dtype=np.int64)
    buf = np.empty(q.shape, dtype=np.int64)
    for it in range(nodes + 2):
        changed = False
        np.add(d_e[:, None], fwd, out=buf)  # (E, N) expert -> client
        val = buf.min(axis=0)  # (N,)
        better = val < d_c
        if better.any():
            if track:
                pred[num_rows + np.flatnonzero(better)] = buf[:, better].argmin(axis=0)
            d_c, changed = np.minimum(d_c, val), True
        better = down & (d_t < d_c)
        if better.any():
            pred[num_rows + np.flatnonzero(better)] = sink
            d_c, changed = np.where(better, d_t, d_c), True
        j = int(np.argmin(np.where(up, d_c, _INF)))
        if up[j] and d_c[j] < d_t:
            d_t, changed = d_c[j], True
            pred[sink] = num_rows + j
        np.add(d_c[None, :], bwd, out=buf)  # (E, N) client -> expert
        val = buf.min(axis=1)  # (E,)
        better = val < d_e
        if better.any():
            if track:
                pred[np.flatnonzero(better)] = num_rows + buf[better].argmin(axis=1)
            d_e, changed = np.minimum(d_e, val), True
        if not changed:
            return (d_e, d_c, d_t), None
        if track and it >= nodes:
            cycle = _pred_cycle(pred)
            if cycle is not None:
                return None, cycle
    if track:
        raise RuntimeError("Bellman-Ford: no predecessor cycle after n passes")  # pragma: no cover
    return None, None


def _pred_cycle(pred: np.ndarray) -> list[int] | None:
    state = np.zeros(pred.size, dtype=np.int8)  # 0 new, 1 on the current walk, 2 done
    for start in range(pred.size):
        walk, v = [], start
        while v != -1 and state[v] == 0:
            state[v] = 1
            walk.append(v)
            v = int(pred[v])
        if v != -1 and state[v] == 1:
            return walk[walk.index(v) :][::-1]  # in arc order: pred -> node
        state[walk] = 2
    return None


def _cancel(x: np.ndarray, cycle: list[int]) -> np.ndarray:
    num_rows = x.shape[0]
    num_cols = x.shape[1]
    x = x.copy()
    for tail, head in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        if tail < num_rows and head < num_rows + num_cols:  # expert -> client: take the arc
            x[tail, head - num_rows] = True
        elif head < num_rows:  # client -> expert: release the arc
            x[head, tail - num_rows] = False
    log.debug("cancelled a negative cycle of %d nodes", len(cycle))
    return x


def _optimal_face(
    q: np.ndarray,
    x: np.ndarray,
    allowed: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    pot: tuple[np.ndarray, np.ndarray, np.int64],
) -> tuple[np.ndarray, np.ndarray]:
    """Arcs ``(E, N)`` and client degrees ``(N,)`` that differ between optimal answers."""
    d_e, d_c, d_t = pot
    num_rows, num_cols = q.shape
    sink = num_rows + num_cols
    deg = x.sum(axis=0)
    zero = allowed & (d_e[:, None] - d_c[None, :] == q)  # reduced cost -q + d_e - d_c == 0
    e_idx, c_idx = np.nonzero(zero)
    taken = x[e_idx, c_idx]
    tails = [np.where(taken, num_rows + c_idx, e_idx)]
    heads = [np.where(taken, e_idx, num_rows + c_idx)]
    level = d_c == d_t
    cols = np.flatnonzero(level & (deg < hi))
    tails.append(num_rows + cols)
    heads.append(np.full(cols.size, sink))
    cols = np.flatnonzero(level & (deg > lo))
    tails.append(np.full(cols.size, sink))
    heads.append(num_rows + cols)
    t, h = np.concatenate(tails), np.concatenate(heads)
    graph = sparse.coo_array((np.ones(t.size), (t, h)), shape=(sink + 1, sink + 1))
    _, label = connected_components(graph, directed=True, connection="strong")
    free = np.zeros(q.shape, dtype=bool)
    free[e_idx, c_idx] = label[e_idx] == label[num_rows + c_idx]
    free_col = level & ((deg < hi) | (deg > lo)) & (label[num_rows:sink] == label[sink])
    return free, free_col
