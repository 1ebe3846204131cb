"""``fedamole bench round CONFIG``: one client-round timed by phase, optionally against another
revision of the code in the same run.

Every measurement runs in a fresh process (:mod:`fedamole.bench.round_worker`) that loads the
config, builds the model and data once (not timed), then plays round 1 of one client: configure,
load, train, RSEA statistics, test scoring, generation, test loss, eval loss, server aggregation and
assignment, each timed on its own. With ``against`` (a git revision, or a folder holding another
checkout's ``src``) the two revisions alternate process by process (A B B A A B ...), so the
machine's load falls on both alike, and the table gives the ratio per phase. The client's metrics
of both are compared too: a speed-up that changes results is reported as such.

Results: ``round.json`` under the output folder (every repetition, medians, ratios, the metric
comparison) and a printed table.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import fedamole
from fedamole.bench import round_worker

__all__ = [
    "BenchError",
    "alternate",
    "bench_round",
    "compare_metrics",
    "revisions",
    "run_worker",
    "source_tree",
]

_WORKER = Path(round_worker.__file__)
_THIS_SRC = Path(fedamole.__file__).resolve().parents[1]


class BenchError(RuntimeError):
    """A revision could not be checked out or a worker failed."""


def bench_round(
    config: Path,
    overrides: Sequence[str],
    out_dir: Path,
    *,
    against: str | None = None,
    repeats: int = 2,
    client: int = 0,
) -> dict:
    """Time one client-round by phase (see the module docstring); writes ``round.json``.

    Args:
        config: the run config (e.g. ``configs/demo.toml``).
        overrides: ``key=value`` overrides of it.
        out_dir: output folder (created if missing).
        against: a git revision of this checkout (``main``, ``HEAD~3``, a sha) or a folder with
            another checkout (its ``src`` is used); ``None`` times this revision only.
        repeats: processes per revision (each plays the round once).
        client: the client whose round is played.

    Raises:
        BenchError: the revision cannot be checked out, or a worker failed (its stderr quoted).
    """
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}: give at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    with revisions(against) as sources:
        runs = alternate(
            list(sources),
            repeats,
            lambda name: _run_worker(sources[name], config, overrides, client, out_dir),
        )
    result = {
        "config": str(config),
        "overrides": list(overrides),
        "client": client,
        "against": against,
        "repeats": repeats,
        "sources": {name: str(path) for name, path in sources.items()},
        "median_seconds": {name: _medians(reps) for name, reps in runs.items()},
        "runs": runs,
    }
    if "other" in runs:
        this, other = result["median_seconds"]["this"], result["median_seconds"]["other"]
        result["speedup"] = {
            phase: other[phase] / this[phase]
            for phase in this
            if phase in other and this[phase] > 0 and other[phase] > 0
        }
        result["metrics"] = compare_metrics(
            runs["this"][0]["repeats"][0]["metrics"], runs["other"][0]["repeats"][0]["metrics"]
        )
    (out_dir / "round.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    return result


@contextmanager
def revisions(against: str | None) -> Iterator[dict[str, Path]]:
    """The ``src`` folders timed: ``{"this": ...}``, and ``"other"`` with ``against``
    (:func:`source_tree`), valid inside the block."""
    with source_tree(against) as other_src:
        yield {"this": _THIS_SRC} if other_src is None else {"this": _THIS_SRC, "other": other_src}


@contextmanager
def source_tree(against: str | None) -> Iterator[Path | None]:
    """The ``src`` folder of ``against``: a folder as given, or a temporary git worktree."""
    if against is None:
        yield None
        return
    folder = Path(against)
    if folder.is_dir():
        src = folder / "src" if (folder / "src" / "fedamole").is_dir() else folder
        if not (src / "fedamole").is_dir():
            raise BenchError(f"--against {against}: no fedamole package under {folder} or its src/")
        yield src.resolve()
        return
    repo = _THIS_SRC.parent
    if not (repo / ".git").exists():
        raise BenchError(
            f"--against {against}: not a folder, and {repo} is not a git checkout to take a "
            "revision from; pass a folder holding the other checkout instead"
        )
    tmp = Path(tempfile.mkdtemp(prefix="fedamole-bench-"))
    tree = tmp / "tree"
    done = subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), against],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BenchError(f"--against {against}: git worktree add failed: {done.stderr.strip()}")
    try:
        yield tree / "src"
    finally:
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


def alternate(
    names: Sequence[str], repeats: int, run: Callable[[str], dict]
) -> dict[str, list[dict]]:
    """``run(name)`` ``repeats`` times for each of ``names``, alternating (A B B A A B ...) so
    that load on the machine falls on every revision alike; the results per name, in order."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            runs[name].append(run(name))
    return runs


def _run_worker(
    src: Path, config: Path, overrides: Sequence[str], client: int, out_dir: Path
) -> dict:
    args = ["--config", str(config), "--client", str(client)]
    args += [arg for item in overrides for arg in ("--override", item)]
    return run_worker(_WORKER, src, args, out_dir)


def run_worker(worker: Path, src: Path, args: Sequence[str], out_dir: Path) -> dict:
    """Run a benchmark worker script (``python -P worker ARGS --out FILE``) with ``src`` first on
    ``PYTHONPATH``, and return the JSON it wrote.

    Raises:
        BenchError: the worker failed (its stderr quoted), or it imported fedamole from somewhere
            else than ``src`` (an install shadows ``PYTHONPATH``).
    """
    out = out_dir / f"worker-{os.getpid()}.json"
    cmd = [sys.executable, "-P", str(worker), *args, "--out", str(out)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"the worker for {src} failed:\n{done.stderr[-4000:]}")
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    finally:
        out.unlink(missing_ok=True)
    if not Path(result["source"]).resolve().is_relative_to(src.resolve()):
        raise BenchError(
            f"the worker meant for {src} imported fedamole from {result['source']}: an install "
            "shadows PYTHONPATH here, so the revisions cannot be told apart"
        )
    return result


def _medians(processes: list[dict]) -> dict[str, float]:
    reps = [rep for proc in processes for rep in proc["repeats"]]
    phases = sorted({phase for rep in reps for phase in rep["phases"]})
    out = {p: statistics.median(rep["phases"].get(p, 0.0) for rep in reps) for p in phases}
    out["evaluation"] = statistics.median(
        sum(rep["phases"].get(p, 0.0) for p in round_worker.EVAL_PHASES) for rep in reps
    )
    out["client-round"] = statistics.median(rep["total"] for rep in reps)
    return out


def compare_metrics(this: dict[str, float], other: dict[str, float]) -> dict:
    """Keys of either side, the largest relative difference, and the keys that differ by more
    than 1e-5 relative (or are missing on one side)."""
    keys = sorted(set(this) | set(other))
    worst, differing = 0.0, []
    for key in keys:
        if key not in this or key not in other:
            differing.append(key)
            continue
        a, b = this[key], other[key]
        rel = 0.0 if a == b else abs(a - b) / max(abs(a), abs(b), 1e-12)
        worst = max(worst, rel) if math.isfinite(rel) else math.inf
        if not rel <= 1e-5:
            differing.append(key)
    return {"keys": len(keys), "max_relative_difference": worst, "differing": differing}


def format_table(result: dict) -> str:
    """The medians per phase (seconds) and, with two revisions, other/this."""
    medians = result["median_seconds"]
    two = "other" in medians
    head = "phase                  this (s)" + ("   other (s)   speed-up" if two else "")
    lines = [head, "-" * len(head)]
    this = medians["this"]
    named = {p for side in medians.values() for p in side} - {"evaluation", "client-round"}
    phases = sorted(named)
    for phase in [*phases, "evaluation", "client-round"]:
        row = f"{phase:<20} {this.get(phase, 0.0):>10.2f}"
        if two:
            other = medians["other"].get(phase, 0.0)
            ratio = result["speedup"].get(phase)
            row += f"  {other:>10.2f}   " + (f"{ratio:>6.2f}x" if ratio else "     -")
        lines.append(row)
    if two:
        m = result["metrics"]
        same = "equal" if not m["differing"] else f"DIFFER in {', '.join(m['differing'])}"
        lines.append(
            f"client metrics ({m['keys']} keys): {same} "
            f"(largest relative difference {m['max_relative_difference']:.2e})"
        )
    return "\n".join(lines)
