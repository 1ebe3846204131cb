"""The run's records: their schema, the JSON-lines writer and readers, and the one fold of
``metrics.jsonl`` (docs/run-directory.md#metricsjsonl).

- **Schema.** A metric record is ``{"round", "client", "split", "metric", "value"}`` plus
  ``"step"`` for a per-step training record (:func:`metric_record`); a server record has
  ``client`` :data:`SERVER_CLIENT`. A ``comm.jsonl`` record is ``{"round", "client", "direction",
  "kind", "bytes"}`` (:func:`comm_record`). Every file is written with sorted keys, one object a
  line (:class:`JsonlLogger`).
- **The fold.** :func:`fold` turns records into ``round -> client -> value`` of one
  ``split/metric``; a later record of the same (round, client) replaces an earlier one. Reports,
  figures, export (FDLoRA's fusion weights), the best checkpoint and the end-of-run summary all
  read scores through it; :class:`JsonlTail` feeds it the lines appended since its last read.
- **Assignments.** ``assignments/round_NNN.json``, written atomically (:func:`write_assignment`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

from fedamole.rundir.layout import ASSIGNMENT_GLOB, RunLayout, assignment_round

__all__ = [
    "SERVER_CLIENT",
    "BrokenRecordError",
    "CommRecord",
    "Fold",
    "JsonlLogger",
    "JsonlTail",
    "MetricRecord",
    "PredictionRecord",
    "assignment_text",
    "comm_record",
    "fold",
    "kept_records",
    "metric_record",
    "prediction_records",
    "read_assignments",
    "read_jsonl",
    "read_predictions",
    "write_assignment",
]

SERVER_CLIENT = -1
"""The ``client`` of server-side records in ``metrics.jsonl`` (``server/round_seconds``)."""

_STEP_FIELD = '"step": '  # how a per-step record's step appears (json.dumps, default separators)


class MetricRecord(TypedDict, total=False):
    """One line of ``metrics.jsonl`` (``step`` only on per-step training records)."""

    round: int
    client: int
    split: str
    metric: str
    value: float
    step: int


class CommRecord(TypedDict):
    """One line of ``comm.jsonl``: tensor payload bytes of one kind in one message."""

    round: int
    client: int
    direction: Literal["down", "up"]
    kind: str
    bytes: int


def metric_record(
    rnd: int, client: int, split: str, metric: str, value: float, step: int | None = None
) -> MetricRecord:
    """A ``metrics.jsonl`` record; ``step`` marks a per-step training record."""
    record: MetricRecord = {
        "round": rnd,
        "client": client,
        "split": split,
        "metric": metric,
        "value": value,
    }
    if step is not None:
        record["step"] = step
    return record


class PredictionRecord(TypedDict, total=False):
    """One line of ``predictions.jsonl``: one test example of one evaluation. ``answer``,
    ``score`` (and ``correct`` for an answer choice) unless ``skipped``."""

    round: int
    client: int
    split: str
    example: int
    answer: str
    score: float
    correct: bool
    skipped: bool


def prediction_records(
    rnd: int, client: int, split: str, results: Iterable[Mapping[str, Any]]
) -> list[PredictionRecord]:
    """``predictions.jsonl`` records of one evaluation: ``results`` are the evaluation's
    per-example records (``example``, ``answer``, ``score``, ...), in example order."""
    head = {"round": rnd, "client": client, "split": split}
    return [{**head, **result} for result in results]  # type: ignore[typeddict-item]


def read_predictions(
    path: Path, split: str = "test"
) -> dict[int, dict[int, list[PredictionRecord]]]:
    """``round -> client -> records`` of ``split`` in a ``predictions.jsonl`` (example order; a
    later evaluation of the same round and client replaces an earlier one); ``{}`` if absent."""
    out: dict[int, dict[int, list[PredictionRecord]]] = {}
    if not path.exists():
        return out
    for rec in read_jsonl(path):
        if rec["split"] == split:
            rows = out.setdefault(int(rec["round"]), {}).setdefault(int(rec["client"]), [])
            if rows and int(rec["example"]) <= int(rows[-1]["example"]):
                rows.clear()  # the same evaluation again (a resumed round): keep the later one
            rows.append(rec)  # type: ignore[arg-type]
    return out


def comm_record(
    rnd: int, client: int, direction: Literal["down", "up"], kind: str, nbytes: int
) -> CommRecord:
    """A ``comm.jsonl`` record."""
    return {"round": rnd, "client": client, "direction": direction, "kind": kind, "bytes": nbytes}


Fold = dict[int, dict[int, float]]
"""``round -> client -> value`` of one ``split/metric`` (:func:`fold`)."""


def fold(
    records: Iterable[Mapping[str, Any]], split: str, metric: str, into: Fold | None = None
) -> Fold:
    """``round -> client -> value`` of the records of ``split/metric``: the one reading of scores
    that reports, figures, export, the best checkpoint and summaries share.

    Args:
        records: ``metrics.jsonl`` records (:func:`read_jsonl`).
        split: e.g. ``"test"``, ``"test_global"``, ``"fusion"``, ``"server"``.
        metric: e.g. ``"score"``, ``"round_seconds"``.
        into: a fold to add to (a reader that follows the file as it grows); returned.

    Returns:
        ``into`` (or a new dict) with every matching record's ``float(value)`` under its
        ``int(round)`` and ``int(client)``; a later record replaces an earlier one.
    """
    out: Fold = {} if into is None else into
    for rec in records:
        if rec["split"] == split and rec["metric"] == metric:
            out.setdefault(int(rec["round"]), {})[int(rec["client"])] = float(rec["value"])
    return out


class JsonlLogger:
    """Append one JSON object per line (keys sorted), flushed after each record.

    Args:
        path: the file (appended to).
        on_record: called after each record is written with a copy of it (keys sorted, as in
            the file), e.g. :class:`~fedamole.rundir.hooks.RecordHooks`; never for the records
            that :meth:`truncate_after` keeps.
    """

    def __init__(self, path: Path, on_record: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.on_record = on_record
        self.counts: dict[int, int] = {}
        """round -> records of that round this logger wrote or :meth:`truncate_after` kept: what
        a checkpoint's ledger records (:mod:`~fedamole.rundir.ledger`)."""
        self._fh = path.open("a", encoding="utf-8")

    def log(self, record: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        rnd = int(record.get("round", -1))
        self.counts[rnd] = self.counts.get(rnd, 0) + 1
        if self.on_record is not None:
            self.on_record({key: record[key] for key in sorted(record)})

    def close(self) -> None:
        self._fh.close()

    def truncate_after(
        self, round_idx: int, *, drop: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        """Drop records of rounds after ``round_idx``, and those ``drop`` selects (used on
        resume), and a half-written last line; :attr:`counts` becomes what is kept."""
        self._fh.close()
        records = kept_records(self.path, round_idx, drop=drop)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        tmp.replace(self.path)
        self.counts = {}
        for rec in records:
            rnd = int(rec.get("round", -1))
            self.counts[rnd] = self.counts.get(rnd, 0) + 1
        self._fh = self.path.open("a", encoding="utf-8")


def kept_records(
    path: Path, round_idx: int, *, drop: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """The records of ``path`` a resume from round ``round_idx`` keeps: those of rounds up to it
    that ``drop`` does not select; a half-written last line (a kill in the middle of writing a
    record) is left out with a warning. ``[]`` when the file does not exist.

    Raises:
        ValueError: a malformed line before the last, naming the file and the line.
    """
    return [
        r
        for r in read_jsonl(path, partial_last="drop")
        if r.get("round", -1) <= round_idx and not (drop is not None and drop(r))
    ]


class BrokenRecordError(ValueError):
    """A malformed line of a JSON-lines file (:func:`read_jsonl`); ``path`` and ``line``
    (1-based) name it."""

    def __init__(self, path: Path, line: int, detail: str):
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: not valid JSON ({detail})")


def read_jsonl(
    path: Path, *, steps: bool | None = None, partial_last: Literal["raise", "drop"] = "drop"
) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a malformed line raises with the file and line number.

    Args:
        path: the file (nothing when it does not exist).
        steps: ``False``: skip ``metrics.jsonl``'s per-step training records (those with a
            ``step``: most of the file at the paper's 200 steps) without parsing them; ``True``:
            only those; ``None``: every record.
        partial_last: ``"drop"`` (default): a malformed *last* line that does not end the file
            with a newline (a record a killed or still running process was writing) is left out
            with a warning naming the file; ``"raise"``: it raises as any malformed line does.

    Raises:
        BrokenRecordError: (a ``ValueError``) a malformed line, naming the file and the line.
    """
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if steps is not None and (_STEP_FIELD in line) != steps:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if partial_last == "drop" and not line.endswith("\n"):  # only the last can
                    logging.getLogger(__name__).warning(
                        "%s: left out its half-written last line %d (a killed or still running "
                        "run was writing it)",
                        path,
                        lineno,
                    )
                    return
                raise BrokenRecordError(path, lineno, exc.msg) from None
            if not isinstance(record, dict):
                raise BrokenRecordError(path, lineno, "not a JSON object")
            yield record


class JsonlTail:
    """Follow a JSON-lines file as it grows: each :meth:`read` returns the records of the
    complete lines appended since the previous one (a line still being written waits for the
    next read)."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0  # bytes already parsed

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def assignment_text(record: Mapping[str, Any]) -> str:
    """The text of an ``assignments/round_NNN.json`` file holding ``record``."""
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def write_assignment(run: RunLayout, rnd: int, record: Mapping[str, Any] | str) -> None:
    """``assignments/round_NNN.json``: the architecture after round ``rnd`` (atomically); a
    ``str`` is the file's text (:func:`assignment_text`)."""
    path = run.assignment(rnd)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(record if isinstance(record, str) else assignment_text(record))
    tmp.replace(path)


def read_assignments(run: RunLayout) -> dict[int, dict[str, Any]]:
    """round -> the assignment record written after it (``{}`` for non-FedAMoLE runs).

    Raises:
        ValueError: a file that is not valid JSON, naming it.
    """
    if not run.assignments.is_dir():
        return {}
    out = {}
    for path in sorted(run.assignments.glob(ASSIGNMENT_GLOB)):
        try:
            out[assignment_round(path)] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg}); restore the file") from None
    return out
