"""What a checkpoint knows about the run directory's other files, so that a resume trusts nothing
it has not checked (docs/run-directory.md#what-a-resume-checks).

Every checkpoint's state carries a :class:`Ledger` (key :data:`LEDGER`): how many records of
each round ``metrics.jsonl`` and ``predictions.jsonl`` held when it was written, every
``comm.jsonl`` record and the text of every ``assignments/round_NNN.json``. On resume
(:func:`check_logs`, then :func:`repair_side_files`):

- ``metrics.jsonl`` and ``predictions.jsonl`` cannot be rebuilt (they hold what the clients
  measured): a missing file, a round with fewer or more records than the ledger counted (cut
  short, a client's records lost, lines edited), or a broken line before the last is refused
  with :class:`LedgerError`, naming the file, the round and the counts, before anything changes;
- ``comm.jsonl`` and the assignments are rewritten from the ledger when they differ from it
  (missing, cut, edited), with a warning naming the file.

A checkpoint written before the ledger existed has none: only the checks of that time apply
(``metrics.jsonl`` must exist).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedamole.rundir.checkpoints import CheckpointError
from fedamole.rundir.layout import ASSIGNMENT_GLOB, RunLayout, assignment_round
from fedamole.rundir.records import kept_records, write_assignment

__all__ = [
    "LEDGER",
    "Ledger",
    "LedgerError",
    "check_logs",
    "read_assignment_texts",
    "repair_side_files",
]

LEDGER = "ledger"
"""The key of the :class:`Ledger` in a checkpoint's state."""

log = logging.getLogger(__name__)

Drop = Callable[[dict[str, Any]], bool]


class LedgerError(CheckpointError):
    """A file a resume relies on does not hold what the checkpoint recorded, and cannot be
    rebuilt from it. The message names the file, the round and the fix."""


@dataclass
class Ledger:
    """What the run directory's files held when a checkpoint was written.

    Attributes:
        metrics: round -> records of ``metrics.jsonl`` (per-step and server records included).
        predictions: round -> records of ``predictions.jsonl``.
        comm: every ``comm.jsonl`` record, in file order.
        assignments: round -> the text of ``assignments/round_NNN.json``.
    """

    metrics: dict[int, int] = field(default_factory=dict)
    predictions: dict[int, int] = field(default_factory=dict)
    comm: list[dict[str, Any]] = field(default_factory=list)
    assignments: dict[int, str] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """The ledger as checkpoint state (plain values; the comm records as one JSON text)."""
        return {
            "metrics": dict(self.metrics),
            "predictions": dict(self.predictions),
            "comm": json.dumps(self.comm, sort_keys=True),
            "assignment_texts": dict(self.assignments),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Ledger | None:
        """The ledger a checkpoint's ``state`` holds; ``None`` for a checkpoint written before
        ledgers existed."""
        raw = state.get(LEDGER)
        if raw is None:
            return None
        return cls(
            metrics={int(k): int(v) for k, v in raw["metrics"].items()},
            predictions={int(k): int(v) for k, v in raw["predictions"].items()},
            comm=json.loads(raw["comm"]),
            assignments={int(k): str(v) for k, v in raw["assignment_texts"].items()},
        )


_FIX = (
    "Restore the file from a copy, or start the run again with --overwrite instead of --resume "
    "(it moves this directory aside)"
)


def check_logs(run: RunLayout, ledger: Ledger | None, rnd: int, *, drop: Drop) -> None:
    """Refuse to resume from round ``rnd``'s checkpoint when ``metrics.jsonl`` or
    ``predictions.jsonl`` does not hold, for every round up to ``rnd``, the records the
    checkpoint's ``ledger`` counted (``drop`` selects the records a resume discards). Reads only.

    Raises:
        LedgerError: the file, the first round that differs, both counts, and the fix.
    """
    files = [("metrics", run.metrics), ("predictions", run.predictions)]
    for name, path in files:
        expected = {} if ledger is None else getattr(ledger, name)
        expected = {r: n for r, n in expected.items() if r <= rnd and n}
        if ledger is None and name == "metrics" and rnd >= 0:
            expected = {rnd: -1}  # an older checkpoint: the file must exist, nothing more known
        if not expected:
            continue
        if not path.exists():
            raise LedgerError(
                f"{path} is missing although the checkpoint holds round {rnd} (its records of "
                "the rounds before cannot be rebuilt, so resuming would finish with some "
                f"missing). {_FIX}"
            )
        if ledger is None:
            continue
        try:
            records = kept_records(path, rnd, drop=drop)
        except ValueError as exc:
            raise LedgerError(f"{exc}: the file is damaged, cannot resume. {_FIX}") from None
        found: dict[int, int] = {}
        for rec in records:
            found[int(rec["round"])] = found.get(int(rec["round"]), 0) + 1
        for r in sorted(expected.keys() | found.keys()):
            if found.get(r, 0) != expected.get(r, 0):
                raise LedgerError(
                    f"{path} holds {found.get(r, 0)} records of round {r}, but "
                    f"{expected.get(r, 0)} were written before the checkpoint of round {rnd}: "
                    "the file was cut short or edited (a client's records lost?), so resuming "
                    f"would finish with wrong results. {_FIX}"
                )


def repair_side_files(run: RunLayout, ledger: Ledger, rnd: int) -> None:
    """Rewrite ``comm.jsonl`` and every ``assignments/round_NNN.json`` of a round up to ``rnd``
    from ``ledger`` where they differ from it (missing, cut short, edited), with a warning
    naming the file; an assignment file of a later round is left for the resumed rounds to
    replace."""
    try:
        comm = kept_records(run.comm, rnd)
    except ValueError:
        comm = None  # a broken line: rebuilt below
    expected = [r for r in ledger.comm if int(r["round"]) <= rnd]
    if comm != expected:
        log.warning(
            "%s did not hold the %d communication records of rounds up to %d that the "
            "checkpoint recorded (%s): rebuilt from the checkpoint",
            run.comm,
            len(expected),
            rnd,
            "missing" if not run.comm.exists() else "cut short or edited",
        )
        tmp = run.comm.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in expected))
        tmp.replace(run.comm)
    for r, text in sorted(ledger.assignments.items()):
        if r > rnd:
            continue
        path = run.assignment(r)
        try:
            current = path.read_text()
        except OSError:
            current = None
        if current != text:
            log.warning(
                "%s %s: rebuilt from the checkpoint",
                path,
                "was missing" if current is None else "differed from the checkpoint's copy",
            )
            write_assignment(run, r, text)


def read_assignment_texts(run: RunLayout) -> dict[int, str]:
    """round -> the text of each ``assignments/round_NNN.json`` (to start a ledger from an older
    checkpoint's run directory)."""
    if not run.assignments.is_dir():
        return {}
    return {
        assignment_round(path): path.read_text()
        for path in sorted(run.assignments.glob(ASSIGNMENT_GLOB))
    }
