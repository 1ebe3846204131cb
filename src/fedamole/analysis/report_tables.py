"""What ``fedamole report`` holds and how it reads in markdown: the :class:`Report` record that
:func:`fedamole.analysis.report.build_report` fills, and the main, paired, eval-loss, overhead and
per-client tables and the notes under them that :func:`~fedamole.analysis.report.format_markdown`
puts together."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedamole.analysis.paired import Paired
from fedamole.analysis.results import RoundMode

__all__ = [
    "Cell",
    "Report",
    "client_table",
    "loss_table",
    "main_table",
    "notes",
    "overhead_table",
    "paired_lines",
]


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
    # (method, scenario) -> the largest epsilon a client reached, over seeds (docs/privacy.md)
    epsilon: dict[tuple[str, str], Cell] = field(default_factory=dict)

    @property
    def n_max(self) -> int:
        return max((c.n for c in self.cells.values()), default=0)


def notes(report: Report) -> list[str]:
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


def paired_lines(report: Report) -> list[str]:
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


def loss_table(report: Report) -> list[str]:
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


def _best(report: Report) -> dict[str, float]:
    best = {}
    for s in report.scenarios:
        best[s] = max(report.cells[m, s].mean for m in report.methods if (m, s) in report.cells)
    if report.average:
        best["avg"] = max(report.average.values())
    return best


def main_table(report: Report) -> list[str]:
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


def overhead_table(report: Report) -> list[str]:
    """Bytes and seconds per client and round; with DP runs, an ``epsilon`` column: the largest a
    client reached at the end of the run (mean ± std over seeds; docs/privacy.md)."""
    head = ["method", "scenario", "up MB/client/round", "down MB/client/round", "s/round"]
    if report.epsilon:
        head.append("epsilon")
    rows = []
    for m in report.methods:
        for s in report.scenarios:
            if (m, s) in report.overhead:
                up, down, secs = report.overhead[m, s]
                rows.append([m, s, _num(up, 3), _num(down, 3), _num(secs, 1)])
                if report.epsilon:
                    eps = report.epsilon.get((m, s))
                    rows[-1].append("—" if eps is None else eps.text(report.n_max))
    return _markdown(head, rows)


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def client_table(report: Report, scenario: str) -> list[str]:
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
