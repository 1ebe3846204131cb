"""What a finished run reports: per-client first and last scores, bytes, experts held.

Read back from the run directory (:class:`~fedamole.rundir.RunDir`, scores through
:func:`~fedamole.rundir.fold`), so both engines and a resumed run print the same summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedamole.rundir import SERVER_CLIENT, RunDir, fold, read_jsonl

__all__ = ["RunResult", "format_summary", "summarize_run"]


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    rounds: int
    first: dict[int, dict[str, float]] = field(
        default_factory=dict
    )  # client -> metrics, first round
    last: dict[int, dict[str, float]] = field(default_factory=dict)  # client -> metrics, last round
    bytes_up: int = 0
    bytes_down: int = 0
    failures: int = 0
    experts: dict[int, list[int]] = field(default_factory=dict)  # client -> experts held per module
    # privacy/epsilon_<what> -> client -> its last logged epsilon (docs/privacy.md#accounting)
    epsilon: dict[str, dict[int, float]] = field(default_factory=dict)


def summarize_run(run_dir: Path) -> RunResult:
    """First/last-round test metrics per client and total bytes, from a run directory's logs."""
    run = RunDir(run_dir)
    by_round: dict[int, dict[int, dict[str, float]]] = {}  # round -> client -> metric -> value
    records = list(read_jsonl(run.metrics, steps=False))
    primary = "test" if any(r["split"] == "test" for r in records) else "test_global"
    for metric in sorted({r["metric"] for r in records if r["split"] == primary}):
        _add(by_round, fold(records, primary, metric), metric)
    # the eval-set loss beside the test metrics of the same round
    eval_loss = fold(records, "eval", "loss")
    _add(by_round, {rnd: eval_loss[rnd] for rnd in eval_loss.keys() & by_round.keys()}, "eval_loss")
    up = down = 0
    for rec in read_jsonl(run.comm):
        if rec["direction"] == "up":
            up += rec["bytes"]
        else:
            down += rec["bytes"]
    rounds = sorted(by_round)
    result = RunResult(run_dir, rounds[-1] if rounds else -1, bytes_up=up, bytes_down=down)
    if rounds:
        result.first, result.last = by_round[rounds[0]], by_round[rounds[-1]]
    result.epsilon = _last_epsilon(records)
    assignments = run.read_assignments()
    if assignments:
        modules = assignments[max(assignments)]["modules"]
        for per_client in modules.values():
            for client, ids in enumerate(per_client):
                result.experts.setdefault(client, []).append(len(ids))
    return result


def _last_epsilon(records: list) -> dict[str, dict[int, float]]:
    """Each ``privacy/epsilon_...`` metric's latest value per client; the server's
    ``dp/epsilon_updates_max`` (the largest over the clients) as client ``-1``."""
    out: dict[str, dict[int, float]] = {}
    names = {r["metric"] for r in records if r["split"] == "privacy"}
    for name in sorted(n for n in names if n.startswith("epsilon_")):
        for _, clients in sorted(fold(records, "privacy", name).items()):
            for client, value in clients.items():
                out.setdefault(name.removeprefix("epsilon_"), {})[client] = value
    for _, clients in sorted(fold(records, "server", "dp/epsilon_updates_max").items()):
        out.setdefault("updates", {}).update(clients)
    return out


def _add(
    by_round: dict[int, dict[int, dict[str, float]]], values: dict[int, dict[int, float]], name: str
) -> None:
    """Put a fold's ``round -> client -> value`` into ``by_round`` as metric ``name``."""
    for rnd, clients in values.items():
        for client, value in clients.items():
            by_round.setdefault(rnd, {}).setdefault(client, {})[name] = value


def format_summary(result: RunResult) -> str:
    """A readable end-of-run summary: per-client first vs last score, bytes, the run's path."""
    lines = ["", "summary: test score and eval loss per client (first round -> last round)"]
    for client in sorted(set(result.first) | set(result.last)):
        first = result.first.get(client, {}).get("score", float("nan"))
        if client not in result.last:
            lines.append(
                f"  client {client:>3}: {first:.4f} -> no result in the last round (failed)"
            )
            continue
        last = result.last[client].get("score", float("nan"))
        line = f"  client {client:>3}: {first:.4f} -> {last:.4f} ({last - first:+.4f})"
        loss_first = result.first.get(client, {}).get("eval_loss")
        loss_last = result.last[client].get("eval_loss")
        if loss_first is not None and loss_last is not None:
            line += f"   eval loss {loss_first:.3f} -> {loss_last:.3f}"
        lines.append(line)
    both = sorted(set(result.first) & set(result.last))  # means over the same clients
    if both:
        mean_first = _mean(result.first[c].get("score") for c in both)
        mean_last = _mean(result.last[c].get("score") for c in both)
        which = (
            "" if len(both) == len(set(result.first) | set(result.last)) else f" (clients {both})"
        )
        lines.append(
            f"  mean      : {mean_first:.4f} -> {mean_last:.4f} ({mean_last - mean_first:+.4f})"
            + which
        )
    if result.experts:
        lines.append("domain experts held per module in the last assignment (mean, min-max):")
        for client, counts in sorted(result.experts.items()):
            mean = sum(counts) / len(counts)
            lines.append(f"  client {client:>3}: {mean:4.1f} ({min(counts)}-{max(counts)})")
    for what, per_client in sorted(result.epsilon.items()):
        values = list(per_client.values())
        spread = f"{min(values):.3f}-{max(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
        which = "the largest of any client" if SERVER_CLIENT in per_client else "per client"
        lines.append(f"privacy ({what}): epsilon at the end, {which}: {spread} (docs/privacy.md)")
    lines.append(
        f"communication: {result.bytes_down / 1e6:.2f} MB down, {result.bytes_up / 1e6:.2f} MB up"
    )
    lines.append(f"run directory: {result.run_dir}")
    return "\n".join(lines)


def _mean(values: Iterator[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")
