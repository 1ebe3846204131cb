"""``fedamole bench step CONFIG``: the training step alone, against the machine's matrix-product
rate, optionally side by side with another revision (docs/results/performance.md).

For every algorithm asked (FedAMoLE and FedIT by default) a fresh process
(:mod:`fedamole.bench.step_worker`) builds the model and data of CONFIG, then trains client
``client`` for ``warmup + steps + profiled`` optimizer steps of round 1 and reports:

- the median seconds of the ``steps`` timed steps (after ``warmup``);
- their real tokens, padded tokens and lm-head columns, and the model FLOPs of a step from the
  backbone's shapes (:func:`fedamole.bench.step_worker.model_flops`);
- this machine's matrix-product rate on the model's own shapes, dtype and threads, and the
  fraction of it the step achieves: model FLOPs on real tokens / step time / that rate;
- a profile of the last ``profiled`` steps (torch profiler, self time by op group).

With ``against`` (a git revision or a folder holding another checkout) the two revisions alternate
process by process (A B B A ...) so that load on the machine falls on both alike, and the table
gives the speed-up and compares the step losses of both (a faster step that trains differently is
reported as such). Results: ``step.json`` under the output folder and a printed table.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from fedamole.bench import step_worker
from fedamole.bench.round import alternate, compare_metrics, revisions, run_worker

__all__ = ["DEFAULT_ALGORITHMS", "bench_step", "format_table", "summarize"]

DEFAULT_ALGORITHMS = ("fedamole", "fedit")
_WORKER = Path(step_worker.__file__)


def bench_step(
    config: Path,
    overrides: Sequence[str],
    out_dir: Path,
    *,
    against: str | None = None,
    repeats: int = 2,
    client: int = 0,
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    warmup: int = 2,
    steps: int = 8,
    profiled: int = 2,
) -> dict:
    """Time the training step (see the module docstring); writes ``step.json``.

    Args:
        config: the run config (e.g. ``configs/demo.toml``).
        overrides: ``key=value`` overrides of it.
        out_dir: output folder (created if missing).
        against: a git revision of this checkout or a folder with another checkout; ``None``
            times this revision only.
        repeats: processes per revision and algorithm.
        client: the client whose batches are trained on.
        algorithms: ``federation.algorithm`` values to time.
        warmup: steps run before timing (first allocations, kernel selection).
        steps: steps timed.
        profiled: steps profiled after the timed ones (0: no profile).

    Raises:
        BenchError: the revision cannot be checked out, or a worker failed.
    """
    if repeats < 1 or steps < 1 or warmup < 0 or profiled < 0:
        raise ValueError(
            f"repeats ({repeats}) and steps ({steps}) must be >= 1, warmup ({warmup}) and "
            f"profiled ({profiled}) >= 0"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    base = ["--config", str(config), "--client", str(client), "--warmup", str(warmup)]
    base += ["--steps", str(steps), "--profiled", str(profiled)]
    base += [arg for item in overrides for arg in ("--override", item)]
    runs: dict[str, dict[str, list[dict]]] = {}
    with revisions(against) as sources:
        for algorithm in algorithms:
            args = [*base, "--algorithm", algorithm]
            runs[algorithm] = alternate(
                list(sources),
                repeats,
                lambda name, args=args: run_worker(_WORKER, sources[name], args, out_dir),
            )
    result = {
        "config": str(config),
        "overrides": list(overrides),
        "client": client,
        "against": against,
        "repeats": repeats,
        "warmup": warmup,
        "steps": steps,
        "profiled": profiled,
        "sources": {name: str(path) for name, path in sources.items()},
        "algorithms": {algorithm: summarize(sides) for algorithm, sides in runs.items()},
        "runs": runs,
    }
    (out_dir / "step.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    return result


def summarize(sides: dict[str, list[dict]]) -> dict:
    """Medians per revision of one algorithm's worker results, the fraction of the matrix-product
    rate, and with two revisions the speed-up and the comparison of their step losses.

    The rate is the median over every process of both revisions (the machine's, not the code's),
    so the two fractions share one denominator. The step time is the median over every timed step
    of every process of a revision.
    """
    rate = statistics.median(r["matmul"]["gflops"] for reps in sides.values() for r in reps)
    out: dict = {"matmul_gflops": rate}
    for name, reps in sides.items():
        step = statistics.median(
            s for r in reps for s in r["step_seconds"][r["warmup"] : r["warmup"] + r["steps"]]
        )
        first = reps[0]
        flops = sum(first["flops"]["real"].values())
        padded = sum(first["flops"]["padded"].values())
        out[name] = {
            "step_seconds": step,
            "model_gflop": flops / 1e9,
            "padded_gflop": padded / 1e9,
            "gflops": flops / step / 1e9,
            "fraction": flops / step / 1e9 / rate if rate else 0.0,
            "tokens": first["tokens"],
            "dtype": first["dtype"],
            "threads": first["threads"],
            "profile": _profile_shares(reps),
        }
    if "other" in sides:
        out["speedup"] = out["other"]["step_seconds"] / out["this"]["step_seconds"]
        this, other = sides["this"][0]["step_losses"], sides["other"][0]["step_losses"]
        out["losses"] = compare_metrics(
            {f"step {i}": v for i, v in enumerate(this, 1)},
            {f"step {i}": v for i, v in enumerate(other, 1)},
        )
    return out


def _profile_shares(reps: list[dict]) -> dict[str, float]:
    """Each op group's share of the profiled wall time, pooled over processes."""
    wall = sum(r["profile_wall"] for r in reps)
    groups: dict[str, float] = {}
    for r in reps:
        for group, seconds in r["profile"].items():
            groups[group] = groups.get(group, 0.0) + seconds
    if not wall:
        return {}
    return {g: s / wall for g, s in sorted(groups.items(), key=lambda kv: -kv[1])}


def format_table(result: dict) -> str:
    """One row per algorithm and revision, the speed-up, and the profile by op group."""
    head = (
        f"{'algorithm':<10} {'revision':<8} {'step (s)':>8} {'tokens real/padded':>19} "
        f"{'GFLOP':>6} {'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'fraction':>8}"
    )
    lines = [head, "-" * len(head)]
    profiles: list[str] = []
    for algorithm, summary in result["algorithms"].items():
        sides = [name for name in ("this", "other") if name in summary]
        for name in sides:
            row = summary[name]
            tokens = f"{row['tokens']['real']:.0f} / {row['tokens']['padded']:.0f}"
            lines.append(
                f"{algorithm:<10} {name:<8} {row['step_seconds']:>8.3f} {tokens:>19} "
                f"{row['model_gflop']:>6.1f} {row['gflops']:>8.1f} "
                f"{summary['matmul_gflops']:>14.1f} {row['fraction']:>8.1%}"
            )
        if "speedup" in summary:
            losses = summary["losses"]
            same = "equal" if not losses["differing"] else f"{len(losses['differing'])} differ"
            lines.append(
                f"{algorithm:<10} {'speed-up':<8} {summary['speedup']:>7.2f}x   step losses "
                f"{same} (largest relative difference {losses['max_relative_difference']:.1e})"
            )
        groups = list(summary["this"]["profile"])
        if groups:
            profiles.append(f"profile of {algorithm} (share of the profiled steps' wall time):")
            for group in groups:
                cells = "  ".join(f"{summary[n]['profile'].get(group, 0.0):>6.1%}" for n in sides)
                profiles.append(f"  {group:<42} {cells}")
    if profiles:
        lines += ["", *profiles]
        if "other" in result["sources"]:
            lines.append("  (columns: this, other)")
    return "\n".join(lines)
