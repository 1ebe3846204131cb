"""Dataset registry: every source becomes a list of rendered :class:`Example`
(docs/data.md#datasets).

=======================  ===============================  =========================================
``data.dataset``         ``data.path``                    without ``data.path``
=======================  ===============================  =========================================
``snli``                 a .jsonl/.json file or a folder  hub ``stanfordnlp/snli`` (train+val+test)
                         of them, all concatenated
``dolly``                the .jsonl (or a folder)         hub ``databricks/databricks-dolly-15k``
``natural_instructions`` the NI root: ``tasks/`` (v2.8)   an error: no hub copy in the paper
                         or ``tasks_pre_v2_drafts/`` plus
                         ``splits/default/train_tasks.txt``
``local``                .jsonl/.json with Dolly fields   an error (the path is required)
``synthetic``            unused                           generated (``synthetic.py``)
=======================  ===============================  =========================================

Hub ids are read through the ``datasets`` package when it is installed (it is not a dependency).

Where ``data.path`` points (docs/data.md#where-datapath-resolves): ``~`` is expanded and a relative
path is joined to the data root, ``$FEDAMOLE_DATA`` when set, else the current working directory
(:func:`resolve_data_path`). :func:`load_examples` resolves it once, logs the absolute path and
hands it to the loaders; a path that does not exist is an error naming the value, the resolved
path, the data root and the fix.

Records: SNLI needs ``premise``, ``hypothesis``, ``label`` (0/1/2; or the original corpus fields
``sentence1``, ``sentence2``, ``gold_label``); Dolly needs ``instruction``, ``context``,
``response``, ``category``; local files need ``instruction``, ``response``, ``category`` and may
have ``context`` and ``choices`` (a list of strings containing the response).

Reference behaviour reproduced or fixed:

- SNLI rows without a gold label (-1) are dropped under every partition. The reference drops them
  only through the Dirichlet partition and keeps them, answered "No", under ``iid``.
- NI keeps the ``num_tasks`` largest tasks of the training split; the reference's unstable argsort
  breaks ties arbitrarily, we break them by task name. Split names without a task file are skipped
  (logged), so a partial copy works. The category is the ``taskNNN`` id.
- The synthetic pool is generated with a fixed seed (:data:`SYNTHETIC_SEED`), so, as with a real
  dataset, run seeds change only the partition and training, not the data.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from fedamole.config import DataConfig
from fedamole.data.prompts import SNLI_CHOICES, SNLI_LABELS, alpaca_prompt, snli_prompt
from fedamole.data.synthetic import generate_synthetic
from fedamole.data.types import Example

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "HUB_IDS",
    "SYNTHETIC_SEED",
    "DataError",
    "DataFileNotFoundError",
    "data_root",
    "load_examples",
    "resolve_data_path",
]

log = logging.getLogger(__name__)

HUB_IDS = {"snli": "stanfordnlp/snli", "dolly": "databricks/databricks-dolly-15k"}
_HUB_SPLITS = {"snli": ("train", "validation", "test"), "dolly": ("train",)}
SYNTHETIC_SEED = 0
_SUFFIXES = (".jsonl", ".json")
_SNLI_LABEL_NAMES = {"entailment": 0, "neutral": 1, "contradiction": 2, "-": -1}
_NI_SPLIT = Path("splits/default/train_tasks.txt")
_NI_TASK_DIRS = ("tasks", "tasks_pre_v2_drafts")
_REQUIRED = object()  # the default of a field that must be present
DATA_ROOT_ENV = "FEDAMOLE_DATA"
"""The environment variable naming the data root, the folder a relative ``data.path`` is in."""
_RULE_DOC = "docs/data.md#where-datapath-resolves"


class DataError(ValueError):
    """A dataset or partition problem, naming the file or field, the value and the fix."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or folder that does not exist."""


class _Record(NamedTuple):
    where: str  # "file:line", "file record N" or "hub_id[split] row N", for error messages
    fields: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Where data.path points


def _env_root() -> str | None:
    """``$FEDAMOLE_DATA``, or None when it is unset or empty."""
    return os.environ.get(DATA_ROOT_ENV) or None


def data_root() -> Path:
    """The folder a relative ``data.path`` is in: ``$FEDAMOLE_DATA`` (``~`` expanded, made
    absolute) when it is set and not empty, else the current working directory."""
    root = _env_root()
    return Path(os.path.abspath(os.path.expanduser(root))) if root else Path.cwd()


def resolve_data_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path that ``data.path`` names (docs/data.md#where-datapath-resolves).

    ``~`` is expanded; a relative path is joined to :func:`data_root`; ``..`` is folded (symbolic
    links are kept). Nothing is read: the path need not exist.
    """
    return Path(os.path.abspath(data_root() / os.path.expanduser(os.fspath(path))))


def _is_relative(given: str) -> bool:
    return not os.path.isabs(os.path.expanduser(given))


def _root_note(given: str) -> str:
    """How ``given`` resolved: relative to which data root, and whether FEDAMOLE_DATA is set."""
    env = _env_root()
    if not _is_relative(given):
        kind = "`~` expanded" if given.startswith("~") else "an absolute path"
        where = f"{DATA_ROOT_ENV}={env} is not used" if env else f"{DATA_ROOT_ENV} is not set"
        return f"{kind}: {where}"
    if env:
        missing = "" if data_root().is_dir() else ", a folder that does not exist"
        return f"relative to {DATA_ROOT_ENV}={env}{missing}"
    return f"relative to the working directory, {DATA_ROOT_ENV} is not set"


def _located(data: DataConfig, given: str) -> DataConfig:
    """``data`` with its ``path``, ``given``, resolved (:func:`resolve_data_path`), logged and
    checked to exist: the one place where ``data.path`` is resolved.

    Raises:
        DataFileNotFoundError: the path does not exist or cannot be looked at.
    """
    path = resolve_data_path(given)
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise DataFileNotFoundError(
            f"`data.path` ({str(path)!r:.120}) cannot be opened ({exc.strerror}); point "
            "`data.path` at the dataset file or folder"
        ) from None
    if not exists:
        layout = "the folder that holds snli/, dolly/ and natural-instructions/"
        fix = (
            f"set {DATA_ROOT_ENV} to {layout}, or pass data.path=ABSOLUTE_PATH (the dataset file "
            "or folder)"
            if _is_relative(given)
            else "point data.path at the dataset file or folder, or at one relative to "
            f"{DATA_ROOT_ENV} ({layout})"
        )
        raise DataFileNotFoundError(
            f"`data.path` = {given!r} resolves to {path} ({_root_note(given)}), which does not "
            f"exist: {fix}; see {_RULE_DOC}"
        )
    log.info("data.path %r: reading %s (%s)", given, path, _root_note(given))
    return data.model_copy(update={"path": str(path)})


# --------------------------------------------------------------------------------------------------
# Reading records


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _SUFFIXES)
    except OSError as exc:
        raise DataError(f"`data.path` ({path}): cannot list the folder ({exc.strerror})") from None
    if not files:
        raise DataError(f"`data.path` ({path}) is a folder without .jsonl or .json files")
    return files


def _parse_json(text: str, file: Path, line: int | None = None) -> Any:
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


def _read_text(file: Path) -> str:
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


def _file_records(file: Path) -> Iterator[_Record]:
    """Records of a JSON-lines file, or of a .json file holding a list of objects."""
    if file.suffix == ".jsonl":
        for lineno, line in enumerate(_LINE_END.split(_read_text(file)), start=1):
            if line.strip():
                yield _Record(f"{file}:{lineno}", _parse_json(line, file, lineno))
        return
    data = _parse_json(_read_text(file), file)
    if not isinstance(data, list):
        raise DataError(f"{file}: expected a JSON list of records, got {type(data).__name__}")
    for i, fields in enumerate(data, start=1):
        yield _Record(f"{file} record {i}", fields)


def _hub_records(dataset: str) -> Iterator[_Record]:
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
            yield _Record(f"{hub_id}[{split}] row {i}", dict(row))


def _records(data: DataConfig) -> Iterator[_Record]:
    if data.path is None:
        yield from _hub_records(data.dataset)
        return
    for file in _data_files(Path(data.path)):
        for record in _file_records(file):
            if not isinstance(record.fields, dict):
                raise DataError(
                    f"{record.where}: expected a JSON object, got {record.fields!r:.60}"
                )
            yield record


def _field(record: _Record, name: str, dataset: str, default: Any = _REQUIRED) -> Any:
    value = record.fields.get(name, default)
    if value is _REQUIRED:
        raise DataError(
            f"{record.where}: missing field `{name}` (present: {sorted(record.fields)}); "
            f"{dataset} records need it"
        )
    return value


def _text(record: _Record, name: str, dataset: str, default: Any = _REQUIRED) -> str:
    value = _field(record, name, dataset, default)
    if not isinstance(value, str):
        raise DataError(f"{record.where}: field `{name}` must be a string, got {value!r:.60}")
    _check_unicode(record, name, value)
    return value


def _check_unicode(record: _Record, name: str, value: str) -> None:
    """A lone surrogate (a JSON escape such as ``\\ud800`` without its pair) is no character: a
    tokenizer or a UTF-8 log cannot take it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{record.where}: field `{name}` holds a lone surrogate {value[exc.start]!r} (half "
            "of a UTF-16 pair, written as a \\u escape); fix the text"
        ) from None


# --------------------------------------------------------------------------------------------------
# Loaders


def _snli_label(record: _Record) -> int:
    if "label" in record.fields:
        label = record.fields["label"]
    else:
        gold = _field(record, "gold_label", "snli")
        if not isinstance(gold, str) or gold not in _SNLI_LABEL_NAMES:
            raise DataError(
                f"{record.where}: SNLI `gold_label` must be one of {sorted(_SNLI_LABEL_NAMES)} "
                f"('-': no gold label), got {gold!r:.40}"
            )
        label = _SNLI_LABEL_NAMES[gold]
    if label not in (-1, 0, 1, 2) or isinstance(label, bool):
        raise DataError(
            f"{record.where}: SNLI `label` must be 0 (entailment), 1 (neutral), 2 (contradiction) "
            f"or -1 (no gold label), got {label!r}"
        )
    return int(label)


def _load_snli(data: DataConfig) -> list[Example]:
    examples = []
    for record in _records(data):
        label = _snli_label(record)
        if label == -1:
            continue
        original = "premise" not in record.fields and "sentence1" in record.fields
        premise = _text(record, "sentence1" if original else "premise", "snli")
        hypothesis = _text(record, "sentence2" if original else "hypothesis", "snli")
        examples.append(
            Example(
                prompt=snli_prompt(premise, hypothesis),
                response=SNLI_CHOICES[label],
                category=SNLI_LABELS[label],
                choices=SNLI_CHOICES,
                instruction=premise,
                context=hypothesis,
            )
        )
    return examples


def _alpaca_example(record: _Record, dataset: str, context_required: bool) -> Example:
    instruction = _text(record, "instruction", dataset)
    context = _text(record, "context", dataset, _REQUIRED if context_required else "")
    response = _text(record, "response", dataset)
    category = _field(record, "category", dataset)
    choices = _field(record, "choices", dataset, [])
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{record.where}: `choices` must be a list of strings, got {choices!r:.80}")
    if len(choices) == 1:
        raise DataError(
            f"{record.where}: `choices` has one option ({choices[0]!r:.40}): an answer-choice "
            "example needs at least two; drop `choices` for a free-text example"
        )
    if len(set(choices)) < len(choices):
        raise DataError(
            f"{record.where}: `choices` {choices!r:.80} repeats an option; give each once"
        )
    for choice in choices:
        _check_unicode(record, "choices", choice)
    if (
        not isinstance(category, str | int)
        or isinstance(category, bool)
        or not str(category).strip()
    ):
        raise DataError(
            f"{record.where}: `category` = {category!r:.40} must be a non-empty name (a string), "
            'e.g. "open_qa"; the partitions group clients\' data by it'
        )
    _check_unicode(record, "category", str(category))
    if choices and response not in choices:
        raise DataError(
            f"{record.where}: `response` ({response!r:.40}) must be one of `choices` "
            f"{choices!r:.80}"
        )
    return Example(
        prompt=alpaca_prompt(instruction, context),
        response=response,
        category=str(category),
        choices=tuple(choices),
        instruction=instruction,
        context=context,
    )


def _load_dolly(data: DataConfig) -> list[Example]:
    return [_alpaca_example(r, "dolly", context_required=True) for r in _records(data)]


def _load_local(data: DataConfig) -> list[Example]:
    if data.path is None:
        raise DataError("`data.path` is required when `data.dataset` = 'local'")
    return [_alpaca_example(r, "local", context_required=False) for r in _records(data)]


def _load_synthetic(data: DataConfig) -> list[Example]:
    try:
        return generate_synthetic(data.num_examples, seed=SYNTHETIC_SEED, families=data.families)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


# --------------------------------------------------------------------------------------------------
# Natural Instructions


def _ni_root(data: DataConfig) -> tuple[Path, Path]:
    """The task folder and the split file of an NI checkout."""
    if data.path is None:
        raise DataError(
            "`data.path` is required for natural_instructions: point it at a checkout of "
            "github.com/allenai/natural-instructions (the folder holding `tasks/` and `splits/`)"
        )
    root = Path(data.path)
    if not root.is_dir():
        raise DataFileNotFoundError(
            f"`data.path` ({root}) is not a folder; natural_instructions needs the NI root folder"
        )
    task_dir = next((root / d for d in _NI_TASK_DIRS if (root / d).is_dir()), None)
    if task_dir is None:
        raise DataFileNotFoundError(
            f"{root} has no task folder ({' or '.join(_NI_TASK_DIRS)}); is `data.path` the NI root?"
        )
    split = root / _NI_SPLIT
    if not split.is_file():
        raise DataFileNotFoundError(
            f"{split} does not exist: natural_instructions needs the training split list "
            f"`{_NI_SPLIT}` under `data.path` ({root})"
        )
    return task_dir, split


def _ni_task(file: Path) -> tuple[str, list[dict[str, Any]]]:
    """The definition and instances of one task file (v2.8 or draft schema)."""
    task = _parse_json(_read_text(file), file)
    if not isinstance(task, dict) or "Definition" not in task or "Instances" not in task:
        raise DataError(f"{file}: a task file needs the fields `Definition` and `Instances`")
    definition = task["Definition"]
    if isinstance(definition, list):  # v2.8: a list of strings; the drafts: one string
        definition = definition[0] if definition else ""
    if not isinstance(definition, str):
        raise DataError(f"{file}: `Definition` must be a string or a list of strings")
    if not isinstance(task["Instances"], list):
        raise DataError(f"{file}: `Instances` must be a list of {{input, output}} objects")
    return definition, task["Instances"]


def _ni_task_id(name: str) -> str:
    match = re.match(r"task\d+", name)
    return match.group(0) if match else name


def _ni_examples(file: Path, definition: str, instances: list[Any]) -> list[Example]:
    category = _ni_task_id(file.stem)
    examples = []
    for i, inst in enumerate(instances, start=1):
        inst = inst if isinstance(inst, dict) else {}
        output = inst.get("output")
        output = [output] if isinstance(output, str) else output
        if (
            not isinstance(inst.get("input"), str)
            or not isinstance(output, list)
            or not output
            or not isinstance(output[0], str)
        ):
            raise DataError(
                f"{file} instance {i}: needs a string `input` and a non-empty `output` list"
            )
        examples.append(
            Example(
                prompt=alpaca_prompt(definition, inst["input"]),
                response=output[0],
                category=category,
                instruction=definition,
                context=inst["input"],
            )
        )
    return examples


def _load_natural_instructions(data: DataConfig) -> list[Example]:
    task_dir, split = _ni_root(data)
    names = [line.strip() for line in _read_text(split).splitlines()]
    names = [n for n in names if n]
    files = [task_dir / f"{n}.json" for n in names]
    present = [f for f in files if f.is_file()]
    if len(present) < len(files):
        missing = len(files) - len(present)
        log.info("NI: %d of %d split tasks have no file in %s", missing, len(files), task_dir)
    if not present:
        raise DataError(
            f"none of the {len(names)} tasks listed in {split} has a file in {task_dir}"
        )
    # Keep the num_tasks largest, ties to the smaller name. Trimming as we go holds at most
    # num_tasks + 1 parsed tasks in memory (v2.8 has 756 training tasks, some of them large).
    kept: list[tuple[int, str, Path, str, list]] = []
    for file in present:
        definition, instances = _ni_task(file)
        kept.append((len(instances), file.stem, file, definition, instances))
        if len(kept) > data.num_tasks:
            kept.sort(key=lambda task: (-task[0], task[1]))
            kept.pop()
    kept.sort(key=lambda task: task[1])
    return [ex for _, _, file, d, inst in kept for ex in _ni_examples(file, d, inst)]


DATASETS: dict[str, Callable[[DataConfig], list[Example]]] = {
    "dolly": _load_dolly,
    "local": _load_local,
    "natural_instructions": _load_natural_instructions,
    "snli": _load_snli,
    "synthetic": _load_synthetic,
}
"""``data.dataset`` -> loader; the keys match :class:`DataConfig`'s ``dataset`` literal."""


def load_examples(data: DataConfig) -> list[Example]:
    """Load a dataset and render every prompt.

    Args:
        data: the data section of the config (``dataset``, ``path``, ``num_examples``,
            ``num_tasks``, ``families``); a relative ``path`` is in the data root
            (:func:`resolve_data_path`).

    Returns:
        The examples in source order (synthetic: in generated order).

    Raises:
        DataFileNotFoundError: ``data.path`` or a required file does not exist.
        DataError: unreadable JSON (with file and line), a missing or ill-typed field, an unknown
            dataset, a hub download without the ``datasets`` package, or an empty dataset.
    """
    if data.dataset not in DATASETS:
        raise DataError(
            f"`data.dataset` ({data.dataset!r}) is unknown; choose one of {sorted(DATASETS)}"
        )
    if data.path is not None and data.dataset != "synthetic":  # the synthetic suite ignores it
        data = _located(data, data.path)
    examples = DATASETS[data.dataset](data)
    if not examples:
        where = data.path if data.path is not None else HUB_IDS.get(data.dataset, data.dataset)
        raise DataError(f"dataset {data.dataset!r} at {where} has no examples; check `data.path`")
    log.info("loaded %d %s examples", len(examples), data.dataset)
    return examples
