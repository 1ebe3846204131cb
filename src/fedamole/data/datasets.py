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
(:func:`~fedamole.data.paths.resolve_data_path`). :func:`load_examples` resolves it once
(:func:`~fedamole.data.paths.locate`), logs the absolute path and hands it to the loaders; a path
that does not exist is an error naming the value, the resolved path, the data root and the fix.
Records are read by :mod:`~fedamole.data.files`; Natural Instructions has its own loader,
:mod:`~fedamole.data.natural_instructions`.

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

import logging
from collections.abc import Callable

from fedamole.config import DataConfig
from fedamole.data.files import HUB_IDS, REQUIRED, Record, check_unicode, field_of, records, text_of
from fedamole.data.natural_instructions import load_natural_instructions
from fedamole.data.paths import locate
from fedamole.data.prompts import SNLI_CHOICES, SNLI_LABELS, alpaca_prompt, snli_prompt
from fedamole.data.synthetic import generate_synthetic
from fedamole.data.types import DataError, Example

__all__ = ["DATASETS", "SYNTHETIC_SEED", "load_examples"]

log = logging.getLogger(__name__)

SYNTHETIC_SEED = 0
_SNLI_LABEL_NAMES = {"entailment": 0, "neutral": 1, "contradiction": 2, "-": -1}


# --------------------------------------------------------------------------------------------------
# Loaders


def _snli_label(record: Record) -> int:
    if "label" in record.fields:
        label = record.fields["label"]
    else:
        gold = field_of(record, "gold_label", "snli")
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
    for record in records(data):
        label = _snli_label(record)
        if label == -1:
            continue
        original = "premise" not in record.fields and "sentence1" in record.fields
        premise = text_of(record, "sentence1" if original else "premise", "snli")
        hypothesis = text_of(record, "sentence2" if original else "hypothesis", "snli")
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


def _alpaca_example(record: Record, dataset: str, context_required: bool) -> Example:
    instruction = text_of(record, "instruction", dataset)
    context = text_of(record, "context", dataset, REQUIRED if context_required else "")
    response = text_of(record, "response", dataset)
    category = field_of(record, "category", dataset)
    choices = field_of(record, "choices", dataset, [])
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
        check_unicode(record, "choices", choice)
    if (
        not isinstance(category, str | int)
        or isinstance(category, bool)
        or not str(category).strip()
    ):
        raise DataError(
            f"{record.where}: `category` = {category!r:.40} must be a non-empty name (a string), "
            'e.g. "open_qa"; the partitions group clients\' data by it'
        )
    check_unicode(record, "category", str(category))
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
    return [_alpaca_example(r, "dolly", context_required=True) for r in records(data)]


def _load_local(data: DataConfig) -> list[Example]:
    if data.path is None:
        raise DataError("`data.path` is required when `data.dataset` = 'local'")
    return [_alpaca_example(r, "local", context_required=False) for r in records(data)]


def _load_synthetic(data: DataConfig) -> list[Example]:
    try:
        return generate_synthetic(data.num_examples, seed=SYNTHETIC_SEED, families=data.families)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


DATASETS: dict[str, Callable[[DataConfig], list[Example]]] = {
    "dolly": _load_dolly,
    "local": _load_local,
    "natural_instructions": load_natural_instructions,
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
        data = locate(data, data.path)
    examples = DATASETS[data.dataset](data)
    if not examples:
        where = data.path if data.path is not None else HUB_IDS.get(data.dataset, data.dataset)
        raise DataError(f"dataset {data.dataset!r} at {where} has no examples; check `data.path`")
    log.info("loaded %d %s examples", len(examples), data.dataset)
    return examples
