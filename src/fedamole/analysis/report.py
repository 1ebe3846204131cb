"""Result tables from run directories, in the layout of the paper's Table 1
(docs/algorithm.md#reported-metrics).

- **Main table**: one column per scenario plus ``avg``, one row per method; a cell is the mean ±
  sample standard deviation (ddof=1; omitted for a single seed) over seeds of the per-seed value
  (best or last round of the client-mean score), × 100. The best mean of each column is bold.
  ``avg`` is the mean of a row's scenario means (only for rows with every scenario).
- **Gain** (docs/algorithm.md#reported-metrics; the reference's ``evaluation.summary``): ``(ours −
  best baseline) / best baseline × 100`` per scenario and on ``avg``, a relative %. Baselines are
  every row except ours and its ablations (labels starting with ``ours-``).
- **Per-client table** per scenario: each client's score at the selected round, mean ± std over
  seeds.
- **Overhead**: bytes up and down per client per training round (MB, 10^6 bytes) and wall seconds
  per round, averaged over seeds.
- **Eval loss**: the client-mean ``eval/loss`` (mean token NLL on the eval split) at the
  last round, mean ± std over seeds, for the personalized rows (a global-timing evaluation records
  no eval loss). On small test sets it is a steadier signal than the score.
- **Verdict**: per scenario, ours against the best baseline of that column: the difference of the
  means in points, and the same difference seed by seed (runs of one seed share the partition and
  the initial weights, so the per-seed difference is the paired comparison), with the number of
  seeds ours wins. Small differences within the seed spread are said to be so.
- **Paired intervals** (:mod:`~.paired`): every method against one (``against``, default ours):
  the difference in client-mean score with a 95 % bootstrap interval over seeds and test examples,
  and the verdict the interval allows (ahead, behind, cannot tell).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from fedamole.analysis.paired import paired_intervals
from fedamole.analysis.privacy_runs import run_epsilon
from fedamole.analysis.report_tables import (
    Cell,
    Report,
    client_table,
    loss_table,
    main_table,
    notes,
    overhead_table,
    paired_lines,
)
from fedamole.analysis.results import (
    Entry,
    RoundMode,
    entries,
    mean_std,
    method_sort_key,
    metric_name,
    scan_runs,
    scenario_sort_key,
)

__all__ = ["Cell", "Report", "build_report", "format_csv", "format_markdown", "verdict_lines"]


def build_report(
    paths: Iterable[str | Path],
    *,
    round_mode: RoundMode = "best",
    ours: str = "FedAMoLE",
    against: str | None = None,
) -> Report:
    """Read every run under ``paths`` and compute the tables; the paired intervals compare every
    method with ``against`` (default ``ours``).

    Runs that cannot be read are left out and named (:func:`~.results.scan_runs`), as are copies
    of one run; runs not finished (no ``done.json``) are included and marked.

    Raises:
        ValueError: no run with test scores under ``paths`` (naming the runs left out, and why).
    """
    runs, skipped = scan_runs(paths)
    items = entries(runs)
    if not items:
        why = "".join(f"; left out {path}: {reason}" for path, reason in skipped.items())
        raise ValueError(f"no run with test scores under {list(map(str, paths))}{why}")
    scenarios = _unique(e.scenario for e in sorted(items, key=scenario_sort_key))
    methods = sorted({e.method for e in items}, key=method_sort_key)
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in items:
        groups.setdefault((e.method, e.scenario), []).append(e)
    cells, clients, overhead, seeds, eval_loss, epsilon = {}, {}, {}, {}, {}, {}
    for key, group in groups.items():
        picked = [(e.seed, v[1] * 100) for e in group if (v := e.value(round_mode)) is not None]
        cells[key] = Cell(*mean_std([value for _, value in picked]))
        seeds[key] = dict(picked)
        losses = [by[max(by)] for e in group if e.split == "test" and (by := _eval_loss(e))]
        if losses:
            eval_loss[key] = Cell(*mean_std(losses))
        clients[key] = _client_cells(group, round_mode)
        overhead[key] = _overhead(group)
        if eps := [v for e in group if (v := run_epsilon(e.run)) is not None]:
            epsilon[key] = Cell(*mean_std(eps))
    average = {
        m: sum(cells[m, s].mean for s in scenarios) / len(scenarios)
        for m in methods
        if all((m, s) in cells for s in scenarios)
    }
    units = {s: metric_name(e for e in items if e.scenario == s) for s in scenarios}
    unfinished = sorted({e.run.name for e in items if not e.run.finished})
    report = Report(
        round_mode,
        ours,
        scenarios,
        methods,
        cells,
        average,
        {},
        units,
        clients,
        overhead,
        unfinished,
        seeds,
        eval_loss,
    )
    report.gain = _gains(report)
    report.epsilon = epsilon
    report.partial = {
        key for key, group in groups.items() if any(not e.run.finished for e in group)
    }
    report.skipped = {str(path): why for path, why in skipped.items()}
    report.round_zero = sorted(
        f"{e.method}, {e.scenario}, seed {e.seed} ({e.run.name})"
        for e in items
        if (v := e.value(round_mode)) is not None and v[0] == 0
    )
    report.against = against or ours
    report.paired = paired_intervals(items, report.against, mode=round_mode)
    return report


def format_markdown(report: Report) -> str:
    """Markdown: the main table, the overhead table, the per-client tables, notes."""
    rnd = "best round (max over rounds)" if report.round_mode == "best" else "last round"
    lines = [
        f"## Results: mean ± std over seeds, per seed the {rnd}",
        "",
        "Client-mean of `test/score` (personalized) or `test_global/score` (global), × 100: "
        + "; ".join(f"{u} for {', '.join(s)}" for u, s in _by_unit(report).items())
        + ". Std: sample (ddof=1). **Bold**: best in column. Gain: (ours − best baseline) / "
        f"best baseline × 100, ours = {report.ours}.",
        "",
    ]
    lines += [*main_table(report), ""]
    if verdict := verdict_lines(report):
        lines += [f"### Verdict: {report.ours} against the best baseline", "", *verdict, ""]
    if report.paired:
        lines += [f"### Paired differences against {report.against}", "", *paired_lines(report)]
    if report.eval_loss:
        lines += ["### Eval loss: client mean at the last round (lower is better)", ""]
        lines += [*loss_table(report), ""]
    lines += ["### Communication and time per round", ""]
    lines += [*overhead_table(report), ""]
    for scenario in report.scenarios:
        lines += [f"### Per client: {scenario} ({report.units[scenario]})", ""]
        lines += [*client_table(report, scenario), ""]
    lines += notes(report)
    return "\n".join(lines).rstrip() + "\n"


def format_csv(report: Report) -> str:
    """Tidy CSV, one row per value: ``table,scenario,method,client,mean,std,n``."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["table", "scenario", "method", "client", "mean", "std", "n"])
    for (method, scenario), cell in sorted(report.cells.items()):
        out.writerow(["main", scenario, method, "", cell.mean, _blank(cell.std), cell.n])
    for method, avg in report.average.items():
        out.writerow(["main", "avg", method, "", avg, "", ""])
    for scenario, gain in report.gain.items():
        out.writerow(["gain_percent", scenario, report.ours, "", _blank(gain), "", ""])
    for (method, scenario), cell in sorted(report.eval_loss.items()):
        out.writerow(["eval_loss", scenario, method, "", cell.mean, _blank(cell.std), cell.n])
    for (method, scenario), per_client in sorted(report.clients.items()):
        for client, cell in sorted(per_client.items()):
            out.writerow(["client", scenario, method, client, cell.mean, _blank(cell.std), cell.n])
    for (method, scenario), paired in sorted(report.paired.items()):
        d = paired.difference
        for name, value in (("mean", d.mean), ("low", d.low), ("high", d.high)):
            row = [f"paired_{name}", scenario, method, "", value * 100, "", len(d.seeds)]
            out.writerow(row)
    for (method, scenario), cell in sorted(report.epsilon.items()):
        out.writerow(["epsilon", scenario, method, "", cell.mean, _blank(cell.std), cell.n])
    for (method, scenario), values in sorted(report.overhead.items()):
        names = ("up_mb_per_round", "down_mb_per_round", "s_per_round")
        for name, value in zip(names, values, strict=True):
            out.writerow([name, scenario, method, "", _blank(value), "", ""])
    return buf.getvalue()


def _by_unit(report: Report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for scenario, unit in report.units.items():
        out.setdefault(unit, []).append(scenario)
    return out


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


def _eval_loss(entry: Entry) -> dict[int, float]:
    return entry.run.mean_by_round("eval", "loss")


def _client_cells(group: list[Entry], mode: RoundMode) -> dict[int, Cell]:
    per_client: dict[int, list[float]] = {}
    for e in group:
        for client, value in e.client_values(mode).items():
            per_client.setdefault(client, []).append(value * 100)
    return {c: Cell(*mean_std(v)) for c, v in sorted(per_client.items())}


def _overhead(group: list[Entry]) -> tuple[float | None, float | None, float | None]:
    comm = [c for e in group if (c := e.run.comm_per_client_round()) is not None]
    secs = [s for e in group if (s := e.run.seconds_per_round()) is not None]
    up = sum(c[0] for c in comm) / len(comm) / 1e6 if comm else None
    down = sum(c[1] for c in comm) / len(comm) / 1e6 if comm else None
    return up, down, (sum(secs) / len(secs) if secs else None)


def _gains(report: Report) -> dict[str, float | None]:
    if report.ours not in report.methods:
        return {}
    baselines = _baselines(report)
    gains: dict[str, float | None] = {}
    columns = [
        (s, {m: report.cells[m, s].mean for m in report.methods if (m, s) in report.cells})
        for s in report.scenarios
    ]
    columns.append(("avg", report.average))
    for column, means in columns:
        best = max((means[m] for m in baselines if m in means), default=None)
        ours = means.get(report.ours)
        gains[column] = None if ours is None or not best else (ours - best) / best * 100
    return gains


def _baselines(report: Report) -> list[str]:
    return [m for m in report.methods if m != report.ours and not m.startswith(report.ours + "-")]


def verdict_lines(report: Report) -> list[str]:
    """One markdown bullet per scenario, then the average: ours − best baseline, paired by seed.

    Empty when ours is not among the methods. "within the seed spread" means the difference of the
    means is smaller than the larger of the two sample stds.
    """
    if report.ours not in report.methods:
        return []
    lines, wins = [], 0
    for s in report.scenarios:
        ours = report.cells.get((report.ours, s))
        rivals = [m for m in _baselines(report) if (m, s) in report.cells]
        if ours is None or not rivals:
            continue
        best = max(rivals, key=lambda m: report.cells[m, s].mean)
        other = report.cells[best, s]
        diff = ours.mean - other.mean
        wins += diff > 0
        mine, theirs = report.seeds[report.ours, s], report.seeds[best, s]
        paired = {k: mine[k] - theirs[k] for k in sorted(mine.keys() & theirs.keys())}
        per_seed = ", ".join(f"seed {k}: {round(d, 2) + 0.0:+.2f}" for k, d in paired.items())
        won = sum(d > 0 for d in paired.values())
        spread = max((c.std for c in (ours, other) if c.std is not None), default=None)
        within = spread is not None and abs(diff) < spread
        word = "beats" if diff > 0 else ("ties" if diff == 0 else "trails")
        lines.append(
            f"- **{s}**: {report.ours} {word} the best baseline, {best}, by {diff:+.2f} points "
            f"({ours.mean:.2f} vs {other.mean:.2f}); per seed {per_seed or 'no common seed'}; "
            f"wins {won} of {len(paired)} seeds" + ("; within the seed spread." if within else ".")
        )
    avg_gain = report.gain.get("avg")
    if lines and avg_gain is not None:
        rivals = {m: v for m, v in report.average.items() if m in _baselines(report)}
        best = max(rivals, key=rivals.get)
        diff = report.average[report.ours] - rivals[best]
        lines.append(
            f"- **Average over scenarios**: {report.ours} {report.average[report.ours]:.2f} vs the "
            f"best baseline on average, {best}, {rivals[best]:.2f} ({diff:+.2f} points, "
            f"{avg_gain:+.2f}% relative); {report.ours} is ahead in {wins} of "
            f"{len(report.scenarios)} scenarios."
        )
    return lines
