"""Natural Instructions (github.com/allenai/natural-instructions) as examples: the ``num_tasks``
largest tasks of the training split (docs/data.md#datasets).

``data.path`` is the NI root: ``tasks/`` (v2.8) or ``tasks_pre_v2_drafts/``, plus
``splits/default/train_tasks.txt``. The reference's unstable argsort breaks ties between equally
large tasks arbitrarily; we break them by task name. Split names without a task file are skipped
(logged), so a partial copy works. The category is the ``taskNNN`` id.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from fedamole.config import DataConfig
from fedamole.data.files import parse_json, read_text
from fedamole.data.prompts import alpaca_prompt
from fedamole.data.types import DataError, DataFileNotFoundError, Example

__all__ = ["load_natural_instructions"]

log = logging.getLogger(__name__)

_NI_SPLIT = Path("splits/default/train_tasks.txt")
_NI_TASK_DIRS = ("tasks", "tasks_pre_v2_drafts")


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
    task = parse_json(read_text(file), file)
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


def load_natural_instructions(data: DataConfig) -> list[Example]:
    task_dir, split = _ni_root(data)
    names = [line.strip() for line in read_text(split).splitlines()]
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
