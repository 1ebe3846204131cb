"""Reading a dataset's records: JSON-lines and JSON files (a file or a folder of them), or a hub
copy through the ``datasets`` package (optional; not a dependency), with the checks every loader
shares (a required field, a string, no lone surrogate). Every error names the file and line (or
the hub row), the value and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from fedamole.config import DataConfig
from fedamole.data.types import DataError

__all__ = [
    "HUB_IDS",
    "REQUIRED",
    "Record",
    "check_unicode",
    "field_of",
    "parse_json",
    "read_text",
    "records",
    "text_of",
]

HUB_IDS = {"snli": "stanfordnlp/snli", "dolly": "databricks/databricks-dolly-15k"}
_HUB_SPLITS = {"snli": ("train", "validation", "test"), "dolly": ("train",)}
_SUFFIXES = (".jsonl", ".json")
REQUIRED = object()  # the default of a field that must be present


class Record(NamedTuple):
    """One source record: where it is (for error messages) and its fields."""

    where: str  # "file:line", "file record N" or "hub_id[split] row N", for error messages
    fields: dict[str, Any]


def data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _SUFFIXES)
    except OSError as exc:
        raise DataError(f"`data.path` ({path}): cannot list the folder ({exc.strerror})") from None
    if not files:
        raise DataError(f"`data.path` ({path}) is a folder without .jsonl or .json files")
    return files


def parse_json(text: str, file: Path, line: int | None = None) -> Any:
    """Parse JSON from ``file``; errors name the file and ``line`` (default: the parser's line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{file}:{line if line is not None else exc.lineno}"
        raise DataError(f"{where}: not valid JSON ({exc.msg}); fix or remove it") from None
    except (RecursionError, ValueError) as exc:  # valid JSON that Python cannot hold
        where = file if line is None else f"{file}:{line}"
        why = (
            "arrays or objects nested too deeply"
            if isinstance(exc, RecursionError)
            else "a number too long to read (over 4300 digits)"
        )
        raise DataError(f"{where}: {why}; fix or remove that value") from None


def read_text(file: Path) -> str:
    """The file as UTF-8 text, or a :class:`DataError` naming the file and the fix."""
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{file}: not UTF-8 text (byte {exc.start}); JSON data files must be UTF-8: "
            "re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read the data file ({exc.strerror})") from None


# JSON Lines ends lines with \n (or \r\n; a lone \r is read as one too). Not str.splitlines():
# it also breaks at U+2028, U+0085 and others, which JSON strings may hold unescaped.
_LINE_END = re.compile(r"\r\n|\r|\n")


def file_records(file: Path) -> Iterator[Record]:
    """Records of a JSON-lines file, or of a .json file holding a list of objects."""
    if file.suffix == ".jsonl":
        for lineno, line in enumerate(_LINE_END.split(read_text(file)), start=1):
            if line.strip():
                yield Record(f"{file}:{lineno}", parse_json(line, file, lineno))
        return
    data = parse_json(read_text(file), file)
    if not isinstance(data, list):
        raise DataError(f"{file}: expected a JSON list of records, got {type(data).__name__}")
    for i, fields in enumerate(data, start=1):
        yield Record(f"{file} record {i}", fields)


def hub_records(dataset: str) -> Iterator[Record]:
    hub_id = HUB_IDS[dataset]
    try:
        import datasets as hf_datasets  # optional; not a dependency of fedamole
    except ImportError:
        raise DataError(
            f"`data.path` is not set for dataset {dataset!r}, and downloading {hub_id!r} needs "
            "the `datasets` package, which is not installed; pass `data.path=` pointing at a "
            "local copy or `pip install datasets`"
        ) from None
    try:
        splits = hf_datasets.load_dataset(hub_id)
    except Exception as exc:  # network, auth, cache: all end in the same advice
        raise DataError(
            f"could not load {hub_id!r} from the hub ({exc}); pass `data.path=` pointing at a "
            "local copy"
        ) from exc
    for split in _HUB_SPLITS[dataset]:
        for i, row in enumerate(splits[split], start=1):
            yield Record(f"{hub_id}[{split}] row {i}", dict(row))


def records(data: DataConfig) -> Iterator[Record]:
    if data.path is None:
        yield from hub_records(data.dataset)
        return
    for file in data_files(Path(data.path)):
        for record in file_records(file):
            if not isinstance(record.fields, dict):
                raise DataError(
                    f"{record.where}: expected a JSON object, got {record.fields!r:.60}"
                )
            yield record


def field_of(record: Record, name: str, dataset: str, default: Any = REQUIRED) -> Any:
    value = record.fields.get(name, default)
    if value is REQUIRED:
        raise DataError(
            f"{record.where}: missing field `{name}` (present: {sorted(record.fields)}); "
            f"{dataset} records need it"
        )
    return value


def text_of(record: Record, name: str, dataset: str, default: Any = REQUIRED) -> str:
    value = field_of(record, name, dataset, default)
    if not isinstance(value, str):
        raise DataError(f"{record.where}: field `{name}` must be a string, got {value!r:.60}")
    check_unicode(record, name, value)
    return value


def check_unicode(record: Record, name: str, value: str) -> None:
    """A lone surrogate (a JSON escape such as ``\\ud800`` without its pair) is no character: a
    tokenizer or a UTF-8 log cannot take it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{record.where}: field `{name}` holds a lone surrogate {value[exc.start]!r} (half "
            "of a UTF-16 pair, written as a \\u escape); fix the text"
        ) from None
