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
from dataclasses import dataclass, field
from pathlib import Path

from fedamole.analysis.paired import Paired, paired_intervals
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


@dataclass(frozen=True)
class Cell:
    """Mean and sample std over seeds (× 100), and the number of seeds."""

    mean: float
    std: float | None
    n: int

    def text(self, n_max: int) -> str:
        body = f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")
        return body + (f" (n={self.n})" if self.n < n_max else "")


@dataclass
class Report:
    """Everything ``fedamole report`` prints."""

    round_mode: RoundMode
    ours: str
    scenarios: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], Cell]  # (method, scenario) -> cell
    average: dict[str, float]  # method -> mean of its scenario means
    gain: dict[str, float | None]  # scenario or "avg" -> relative gain %
    units: dict[str, str]  # scenario -> metric name
    clients: dict[tuple[str, str], dict[int, Cell]]  # (method, scenario) -> client -> cell
    overhead: dict[tuple[str, str], tuple[float | None, float | None, float | None]]
    unfinished: list[str] = field(default_factory=list)
    seeds: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)  # seed -> × 100
    eval_loss: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (method, scenario)
    against: str = ""  # the reference of the paired intervals
    paired: dict[tuple[str, str], Paired] = field(default_factory=dict)  # (method, scenario)
    partial: set[tuple[str, str]] = field(default_factory=set)  # cells with unfinished runs
    skipped: dict[str, str] = field(default_factory=dict)  # run directory left out -> why
    round_zero: list[str] = field(default_factory=list)  # results taken at round 0

    @property
    def n_max(self) -> int:
        return max((c.n for c in self.cells.values()), default=0)


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
    cells, clients, overhead, seeds, eval_loss = {}, {}, {}, {}, {}
    for key, group in groups.items():
        picked = [(e.seed, v[1] * 100) for e in group if (v := e.value(round_mode)) is not None]
        cells[key] = Cell(*mean_std([value for _, value in picked]))
        seeds[key] = dict(picked)
        losses = [by[max(by)] for e in group if e.split == "test" and (by := _eval_loss(e))]
        if losses:
            eval_loss[key] = Cell(*mean_std(losses))
        clients[key] = _client_cells(group, round_mode)
        overhead[key] = _overhead(group)
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
    lines += [*_main_table(report), ""]
    if verdict := verdict_lines(report):
        lines += [f"### Verdict: {report.ours} against the best baseline", "", *verdict, ""]
    if report.paired:
        lines += [f"### Paired differences against {report.against}", "", *_paired_lines(report)]
    if report.eval_loss:
        lines += ["### Eval loss: client mean at the last round (lower is better)", ""]
        lines += [*_loss_table(report), ""]
    lines += ["### Communication and time per round", ""]
    lines += [*_overhead_table(report), ""]
    for scenario in report.scenarios:
        lines += [f"### Per client: {scenario} ({report.units[scenario]})", ""]
        lines += [*_client_table(report, scenario), ""]
    lines += _notes(report)
    return "\n".join(lines).rstrip() + "\n"


def _notes(report: Report) -> list[str]:
    """The notes under the tables: unfinished runs (†), results taken at round 0, runs left
    out."""
    notes = []
    if report.unfinished:
        shown = ", ".join(report.unfinished[:10]) + (" ..." if len(report.unfinished) > 10 else "")
        notes.append(
            f"†: includes runs not finished (no done.json): {shown} "
            f"({len(report.unfinished)} run(s), included with the rounds they have so far)."
        )
    if report.round_zero:
        rule = "best" if report.round_mode == "best" else "last"
        notes.append(
            f"The {rule} round of these results is round 0 (the untrained model, before any "
            f"training): {'; '.join(report.round_zero)}."
        )
    if report.skipped:
        left = "; ".join(f"{path}: {why}" for path, why in report.skipped.items())
        notes.append(f"Left out {len(report.skipped)} run(s): {left}.")
    return [line for note in notes for line in (note, "")]


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
    for (method, scenario), values in sorted(report.overhead.items()):
        names = ("up_mb_per_round", "down_mb_per_round", "s_per_round")
        for name, value in zip(names, values, strict=True):
            out.writerow([name, scenario, method, "", _blank(value), "", ""])
    return buf.getvalue()


def _paired_lines(report: Report) -> list[str]:
    """The paired-interval table and its reading."""
    methods = [m for m in report.methods if any((m, s) in report.paired for s in report.scenarios)]
    rows = []
    for m in methods:
        row = [m]
        for s in report.scenarios:
            p = report.paired.get((m, s))
            if p is None:
                row.append("—")
                continue
            d, star = p.difference, "" if p.examples else "*"
            row.append(
                f"{d.mean * 100:+.2f} [{d.low * 100:+.2f}, {d.high * 100:+.2f}] "
                f"{d.verdict}{star} (n={len(d.seeds)})"
            )
        rows.append(row)
    seeds_only = any(not p.examples for p in report.paired.values())
    notes = [
        "",
        f"Method − {report.against} in client-mean score, × 100, at the round the table uses; "
        "[95 % interval] from a bootstrap that resamples seeds and, within them, test examples, "
        "paired across the two methods (docs/results/collaboration.md); ahead / behind: the "
        "interval excludes 0; n: seeds both ran.",
    ]
    if seeds_only:
        notes.append(
            "*: a run without predictions.jsonl (made before it existed): seeds resampled only."
        )
    return [*_markdown(["method", *report.scenarios], rows), *notes, ""]


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


def _loss_table(report: Report) -> list[str]:
    methods = [
        m for m in report.methods if any((m, s) in report.eval_loss for s in report.scenarios)
    ]
    best = {
        s: min((c.mean for (m, sc), c in report.eval_loss.items() if sc == s), default=None)
        for s in report.scenarios
    }
    rows = []
    for m in methods:
        row = [m]
        for s in report.scenarios:
            cell = report.eval_loss.get((m, s))
            text = "—" if cell is None else _loss_text(cell, report.n_max)
            row.append(f"**{text}**" if cell and cell.mean == best[s] else text)
        rows.append(row)
    return _markdown(["method", *report.scenarios], rows)


def _loss_text(cell: Cell, n_max: int) -> str:
    body = f"{cell.mean:.3f}" + (f" ± {cell.std:.3f}" if cell.std is not None else "")
    return body + (f" (n={cell.n})" if cell.n < n_max else "")


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


def _best(report: Report) -> dict[str, float]:
    best = {}
    for s in report.scenarios:
        best[s] = max(report.cells[m, s].mean for m in report.methods if (m, s) in report.cells)
    if report.average:
        best["avg"] = max(report.average.values())
    return best


def _main_table(report: Report) -> list[str]:
    best = _best(report)
    head = ["method", *report.scenarios, "avg"]
    rows = []
    for m in report.methods:
        row = [m]
        for s in report.scenarios:
            cell = report.cells.get((m, s))
            text = cell.text(report.n_max) if cell else "—"
            text = f"**{text}**" if cell and cell.mean == best[s] else text
            row.append(text + (" †" if (m, s) in report.partial else ""))
        avg = report.average.get(m)
        avg_text = "—" if avg is None else f"{avg:.2f}"
        row.append(f"**{avg_text}**" if avg is not None and avg == best.get("avg") else avg_text)
        rows.append(row)
    if report.gain:
        rows.append(
            ["gain (%)"]
            + [_signed(report.gain.get(s)) for s in report.scenarios]
            + [_signed(report.gain.get("avg"))]
        )
    return _markdown(head, rows)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _overhead_table(report: Report) -> list[str]:
    head = ["method", "scenario", "up MB/client/round", "down MB/client/round", "s/round"]
    rows = []
    for m in report.methods:
        for s in report.scenarios:
            if (m, s) in report.overhead:
                up, down, secs = report.overhead[m, s]
                rows.append([m, s, _num(up, 3), _num(down, 3), _num(secs, 1)])
    return _markdown(head, rows)


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _client_table(report: Report, scenario: str) -> list[str]:
    methods = [m for m in report.methods if (m, scenario) in report.clients]
    ids = sorted({c for m in methods for c in report.clients[m, scenario]})
    head = ["method", *(f"client {c}" for c in ids)]
    rows = []
    for m in methods:
        cells = report.clients[m, scenario]
        rows.append([m] + [cells[c].text(0) if c in cells else "—" for c in ids])
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"  # noqa: E731
    return [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]
