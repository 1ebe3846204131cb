"""Benchmark of the RSEA assignment solver (docs/algorithm.md#solver).

Two measurements, each against ``scipy.optimize.milp`` (HiGHS branch-and-bound on the same binary
program, ``mip_rel_gap=0``) on the same instances:

* **paper**: all 32 modules of one round at paper scale (E=30 experts, N=10 clients, k=2, 2..8
  experts per client), affinities from random rank-8 embeddings through
  :func:`~fedamole.federated.assignment.affinity`;
* **scale**: one module at N in {10, 100, 1000} clients with E=3N (same k and bounds).

Solvers: ``flow`` (OR-tools min-cost flow, when installed), ``lp`` (the scipy HiGHS LP fallback) and
``milp``. Times are end-to-end ``solve_assignment`` calls (quantization, solve, integer
certificate, tie check); for milp only the solve (its sparse constraint matrices are built outside
the timer). Medians of several repeats. Every solver's objective is checked against milp's to 1e-9
and flow against lp for identical assignments. milp is given a 60 s limit; past it the row says it
was skipped. ``quick=True`` keeps N <= 100 and one repeat.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from fedamole.federated.assignment import affinity, solve_assignment
from fedamole.federated.bmatching import have_ortools

__all__ = ["main"]

_K, _LO, _HI, _RANK, _MODULES = 2, 2, 8, 8, 32
_MILP_LIMIT_S = 60.0
_TOL = 1e-9


def main(out_dir: Path, *, quick: bool = False) -> dict:
    """Run the assignment benchmark, write ``assign.json`` under ``out_dir`` and print a table.

    Args:
        out_dir: output folder (created if missing).
        quick: N <= 100 and one repeat (a smoke test, a few seconds).

    Returns:
        The JSON-able results (``paper``, ``scale``, ``environment``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    solvers = (["flow"] if have_ortools() else []) + ["lp", "milp"]
    result = {
        "environment": _environment(),
        "settings": {"per_expert": _K, "min_per_client": _LO, "max_per_client": _HI},
        "paper": _paper(rng, solvers, repeats=1 if quick else 7),
        "scale": [
            _scale(rng, n, solvers, repeats=1 if quick else {10: 7, 100: 5}.get(n, 1))
            for n in ((10, 100) if quick else (10, 100, 1000))
        ],
    }
    (out_dir / "assign.json").write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)
    return result


def _environment() -> dict:
    versions = {}
    for pkg in ("numpy", "scipy", "ortools"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "cpus": os.cpu_count(), **versions}


def _instance(rng: np.random.Generator, n: int) -> np.ndarray:
    e = 3 * n
    return affinity(rng.normal(size=(e, _RANK)), rng.normal(size=(n, _RANK)))  # (E, N)


def _solve(name: str, p: np.ndarray) -> np.ndarray | None:
    """One solve; ``None`` when milp hits its time limit."""
    if name != "milp":
        return solve_assignment(
            p, per_expert=_K, min_per_client=_LO, max_per_client=_HI, backend=name
        )
    return _milp(p, _milp_problem(p.shape))


def _milp_problem(shape: tuple[int, int]) -> list[LinearConstraint]:
    e, n = shape
    arcs = np.arange(e * n)
    rows = sparse.csr_array((np.ones(e * n), (arcs // n, arcs)), shape=(e, e * n))
    cols = sparse.csr_array((np.ones(e * n), (arcs % n, arcs)), shape=(n, e * n))
    return [LinearConstraint(rows, _K, _K), LinearConstraint(cols, _LO, _HI)]


def _milp(p: np.ndarray, constraints: list[LinearConstraint]) -> np.ndarray | None:
    res = milp(
        -p.ravel(),
        integrality=np.ones(p.size),
        bounds=Bounds(0, 1),
        constraints=constraints,
        options={"mip_rel_gap": 0.0, "time_limit": _MILP_LIMIT_S},
    )
    if res.status != 0:
        return None
    return np.rint(res.x).reshape(p.shape).astype(bool)


def _timed(fn: Callable[[], np.ndarray | None], repeats: int) -> tuple[float, np.ndarray | None]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        if out is None:
            break
    return 1e3 * statistics.median(times), out


def _compare(p_list: list[np.ndarray], answers: dict[str, list[np.ndarray | None]]) -> dict:
    """Objective differences to milp and whether flow and lp agree exactly."""
    out: dict = {}
    ref = answers.get("milp")
    if ref is not None and all(x is not None for x in ref):
        for name in answers:
            if name != "milp":
                diff = max(
                    abs(float((p * x).sum()) - float((p * m).sum()))
                    for p, x, m in zip(p_list, answers[name], ref, strict=True)
                )
                out[f"{name}_objective_diff"] = diff
                out[f"{name}_objective_ok"] = diff <= _TOL
    if "flow" in answers and "lp" in answers:
        out["flow_equals_lp"] = all(
            np.array_equal(a, b) for a, b in zip(answers["flow"], answers["lp"], strict=True)
        )
    return out


def _paper(rng: np.random.Generator, solvers: list[str], repeats: int) -> dict:
    probs = [_instance(rng, 10) for _ in range(_MODULES)]
    constraints = _milp_problem(probs[0].shape)
    ms, answers = {}, {}
    for name in solvers:
        if name == "milp":

            def run() -> list:
                return [_milp(p, constraints) for p in probs]
        else:

            def run(name: str = name) -> list:
                return [_solve(name, p) for p in probs]

        ms[name], answers[name] = _timed(run, repeats)
    row = {"experts": 30, "clients": 10, "modules": _MODULES, "repeats": repeats}
    return {**row, "ms": _rounded(ms), **_compare(probs, answers), **_speedups(ms)}


def _scale(rng: np.random.Generator, n: int, solvers: list[str], repeats: int) -> dict:
    p = _instance(rng, n)
    constraints = _milp_problem(p.shape)
    ms, answers, notes = {}, {}, []
    for name in solvers:
        reps = 1 if name != "flow" and n >= 1000 else repeats
        if name == "milp":
            ms[name], x = _timed(lambda: _milp(p, constraints), reps)
            if x is None:
                notes.append(f"milp skipped: no optimum within {_MILP_LIMIT_S:.0f} s")
                del ms[name]
                continue
        else:
            ms[name], x = _timed(lambda name=name: _solve(name, p), reps)
        answers[name] = [x]
    row = {"experts": 3 * n, "clients": n, "repeats": repeats, "ms": _rounded(ms)}
    return {**row, **_compare([p], answers), **_speedups(ms), "notes": notes}


def _speedups(ms: dict[str, float]) -> dict:
    if "milp" not in ms:
        return {}
    return {f"milp_over_{k}": round(ms["milp"] / v, 1) for k, v in ms.items() if k != "milp"}


def _rounded(ms: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in ms.items()}


def _print_table(result: dict) -> None:
    names = ["flow", "lp", "milp"]
    print("RSEA assignment solve, median ms (k=2, 2..8 experts per client)")
    print(f"{'case':>28} " + " ".join(f"{n:>10}" for n in names) + f" {'milp/flow':>10} {'ok':>4}")
    cases = [(f"paper: {_MODULES} modules E=30 N=10", result["paper"])]
    cases += [(f"one module E={r['experts']} N={r['clients']}", r) for r in result["scale"]]
    for label, row in cases:
        cells = " ".join(f"{row['ms'].get(n, float('nan')):>10.2f}" for n in names)
        ok = all(v for k, v in row.items() if k.endswith("_ok") or k == "flow_equals_lp")
        ratio = row.get("milp_over_flow", float("nan"))
        print(f"{label:>28} {cells} {ratio:>10.1f} {'yes' if ok else 'NO':>4}")
        for note in row.get("notes", []):
            print(f"{'':>28} {note}")
