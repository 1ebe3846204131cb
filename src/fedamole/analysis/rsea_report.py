"""The RSEA benchmark's tables (``fedamole report RUNS --rsea``, ``make bench-rsea``).

From FedAMoLE runs that log ``server/rsea/...`` (and any other runs beside them, for the quality
columns): per method, the diagnostics per round (mean over seeds), then quality at the last round
(client-mean test score and eval loss, mean ± std over seeds), and paired-by-seed verdicts of every
method against the paper's rule (``FedAMoLE``): in how many seeds it scored higher and had the
lower eval loss, and the mean differences.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedamole.analysis.results import Entry, entries, load_runs, mean_std, method_sort_key

__all__ = ["rsea_tables"]

DIAGNOSTICS = ("group_purity", "group_purity_chance", "retention", "affinity_spread")


def rsea_tables(paths: Iterable[str | Path], *, reference: str = "FedAMoLE") -> str:
    """Markdown tables of the RSEA benchmark (see the module docstring).

    Raises:
        ValueError: no run, or none with RSEA diagnostics.
    """
    items = entries(load_runs(paths))
    if not items:
        raise ValueError(f"no run with test scores under {[str(p) for p in paths]}")
    by_method: dict[str, list[Entry]] = {}
    for e in items:
        by_method.setdefault(e.method, []).append(e)
    methods = sorted(by_method, key=method_sort_key)
    diag = [m for m in methods if by_method[m][0].run.server_metric("rsea/group_purity")]
    if not diag:
        raise ValueError("none of the runs logs server/rsea/... diagnostics (FedAMoLE runs do)")
    lines = ["### Assignment diagnostics per round (mean over seeds)", ""]
    rounds = sorted({r for m in diag for e in by_method[m] for r in _series(e, "group_purity")})
    head = "| method | " + " | ".join(
        f"{name.replace('_', ' ')} r{r}" for name in ("group_purity", "retention") for r in rounds
    )
    lines += [head + " |", "|---" * (1 + 2 * len(rounds)) + "|"]
    for m in diag:
        cells = [
            _fmt([_series(e, name).get(r) for e in by_method[m]])
            for name in ("group_purity", "retention")
            for r in rounds
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    chance = {
        r: v
        for m in diag
        for e in by_method[m]
        for r, v in _series(e, "group_purity_chance").items()
    }
    spread = {
        m: _fmt([v for e in by_method[m] for v in _series(e, "affinity_spread").values()])
        for m in diag
    }
    lines += [
        "",
        "Chance level of group purity (a uniformly random feasible assignment): "
        + ", ".join(f"r{r} {v:.3f}" for r, v in sorted(chance.items())),
        "",
        "Affinity spread (mean over RSEA rounds and seeds): "
        + "; ".join(f"{m} {v}" for m, v in spread.items() if v != "-"),
        "",
        "### Quality at the last round (client mean; mean ± std over seeds)",
        "",
        "| method | seeds | test score | eval loss |",
        "|---|---|---|---|",
    ]
    for m in methods:
        score = [_last(e, "score") for e in by_method[m]]
        loss = [_last(e, "loss", split="eval") for e in by_method[m]]
        lines.append(f"| {m} | {len(by_method[m])} | {_fmt(score, 100)} | {_fmt(loss)} |")
    if reference in by_method:
        lines += [
            "",
            f"### Paired by seed against {reference} (the paper's rule)",
            "",
            "| method | higher score | lower eval loss | mean score diff (x100) | mean loss diff |",
            "|---|---|---|---|---|",
        ]
        ref = {e.seed: e for e in by_method[reference]}
        for m in methods:
            if m == reference:
                continue
            pairs = [(e, ref[e.seed]) for e in by_method[m] if e.seed in ref]
            ds = [_diff(_last(a, "score"), _last(b, "score")) for a, b in pairs]
            dl = [_diff(_last(a, "loss", "eval"), _last(b, "loss", "eval")) for a, b in pairs]
            ds, dl = [d for d in ds if d is not None], [d for d in dl if d is not None]
            lines.append(
                f"| {m} | {sum(d > 0 for d in ds)}/{len(ds)} | {sum(d < 0 for d in dl)}/{len(dl)} "
                f"| {_fmt(ds, 100, signed=True)} | {_fmt(dl, signed=True)} |"
            )
    return "\n".join(lines) + "\n"


def _series(e: Entry, name: str) -> dict[int, float]:
    return e.run.server_metric(f"rsea/{name}")


def _last(e: Entry, metric: str, split: str | None = None) -> float | None:
    by_round = e.run.mean_by_round(split or e.split, metric)
    return by_round[max(by_round)] if by_round else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _fmt(values: list[float | None], scale: float = 1.0, *, signed: bool = False) -> str:
    found = [v * scale for v in values if v is not None]
    if not found:
        return "-"
    mean, std, _ = mean_std(found)
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if std is None else f"{text} ± {std:.3f}"
