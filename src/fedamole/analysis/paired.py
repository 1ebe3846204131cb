"""``fedamole report``'s paired intervals: each method against one chosen method, per scenario
(docs/results/collaboration.md#how-to-read-the-intervals).

For a method and the reference on one scenario, the runs of each seed both have are paired (one
seed: one partition, one test set, one initial model). Each run contributes its per-example test
scores (``predictions.jsonl``) at the round the report selects (best or last), per client; the
difference of client-mean scores gets a 95 % interval from :func:`~.bootstrap.paired_difference`,
which resamples seeds and, within them, test examples, paired across the two methods. A run
without ``predictions.jsonl`` (made before the file existed) makes the pair resample seeds only:
each client then counts as one score, and the interval says so (``examples = False``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fedamole.analysis.bootstrap import Difference, PerExample, paired_difference
from fedamole.analysis.results import Entry, RoundMode
from fedamole.rundir import RunLayout, read_predictions

__all__ = ["Paired", "paired_intervals"]

_Reader = Callable[[Path, str], dict[int, dict[int, list[float]]]]


@dataclass(frozen=True)
class Paired:
    """A method against the reference on one scenario: the difference (× 100 in the tables) and
    whether test examples were resampled (else seeds only)."""

    difference: Difference
    examples: bool


def _predictions(path: Path, split: str) -> dict[int, dict[int, list[float]]]:
    """round -> client -> scores of the examples that were scored (skipped ones left out);
    ``{}`` (seeds resampled only, with a warning) when ``predictions.jsonl`` has a broken line
    before its last."""
    try:
        found = read_predictions(RunLayout(path).predictions, split)
    except ValueError as exc:
        logging.getLogger(__name__).warning(
            "run %s: %s; its paired intervals resample seeds only", path, exc
        )
        return {}
    return {
        rnd: {
            c: [float(r["score"]) for r in rows if not r.get("skipped")] for c, rows in by.items()
        }
        for rnd, by in found.items()
    }


def _scores(
    entry: Entry, mode: RoundMode, examples: bool, read: _Reader
) -> list[list[float]] | None:
    """Per client (in client order), the scores that represent the entry: its test examples'
    (``examples``) or its one client score at the selected round; ``None`` without scores."""
    picked = entry.value(mode)
    if picked is None:
        return None
    clients = entry.client_values(mode)
    if not examples:
        return [[clients[c]] for c in sorted(clients)]
    found = read(entry.run.path, entry.split).get(picked[0], {})
    if set(found) != set(clients) or not all(found[c] for c in clients):
        return None
    return [found[c] for c in sorted(clients)]


def _per_seed(
    group: Iterable[Entry], mode: RoundMode, examples: bool, read: _Reader
) -> PerExample | None:
    out = {}
    for e in group:
        scores = _scores(e, mode, examples, read)
        if scores is None:
            return None
        out[e.seed] = scores
    return out


def paired_intervals(
    items: Iterable[Entry],
    against: str,
    *,
    mode: RoundMode,
    resamples: int = 2000,
) -> dict[tuple[str, str], Paired]:
    """``(method, scenario) -> Paired`` for every method other than ``against`` that shares at
    least one seed with it on the scenario (the seeds both ran are used)."""
    read = cache(_predictions)  # each run's file read once per report
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in items:
        groups.setdefault((e.method, e.scenario), []).append(e)
    out = {}
    for (method, scenario), group in sorted(groups.items()):
        reference = groups.get((against, scenario))
        if method == against or reference is None:
            continue
        seeds = {e.seed for e in group} & {e.seed for e in reference}
        if not seeds:
            continue
        mine = [e for e in group if e.seed in seeds]
        theirs = [e for e in reference if e.seed in seeds]
        for examples in (True, False):
            a = _per_seed(mine, mode, examples, read)
            b = _per_seed(theirs, mode, examples, read)
            if a is None or b is None:
                continue
            try:
                diff = paired_difference(a, b, resamples=resamples)
            except ValueError:  # e.g. test sets of different sizes: not comparable by example
                continue
            out[method, scenario] = Paired(diff, examples)
            break
    return out
