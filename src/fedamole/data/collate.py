"""Tokenization and collation (docs/algorithm.md#tokenization).

Training format: ``tok(prompt)`` (with the tokenizer's own special tokens, e.g. BOS) followed by
``tok(response)`` without special tokens and then EOS; labels are -100 over the prompt. Sequences
longer than ``max_length`` are truncated and their last token is overwritten with EOS. Examples
whose prompt alone is ``>= max_length`` tokens cannot be trained on and are dropped
(:func:`encode_train` returns ``None``; callers count and log them).

Batches are left-padded: ``input_ids`` with the pad id, ``attention_mask`` with 0, ``labels`` with
-100.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from fedamole.data.types import Example

__all__ = [
    "IGNORE_INDEX",
    "Encoded",
    "collate",
    "encode_choices",
    "encode_prompt",
    "encode_train",
]

IGNORE_INDEX = -100
Encoded = dict[str, list[int]]


def encode_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of a prompt, with the tokenizer's special tokens (BOS where it adds one)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def _encode_target(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def _join(
    prompt_ids: list[int], target_ids: list[int], eos_id: int, max_length: int
) -> Encoded | None:
    if len(prompt_ids) >= max_length:
        return None
    input_ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
    input_ids[-1] = eos_id  # a no-op unless truncated (the target already ends with EOS)
    labels[-1] = eos_id
    return {"input_ids": input_ids, "labels": labels}


def encode_train(
    example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Encoded | None:
    """``{"input_ids", "labels"}`` of one example, or ``None`` if its prompt is too long."""
    prompt_ids = encode_prompt(example.prompt, tokenizer)
    target_ids = _encode_target(example.response, tokenizer)
    return _join(prompt_ids, target_ids, tokenizer.eos_token_id, max_length)


def encode_choices(
    example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[Encoded] | None:
    """One training-format sequence per choice (prompt + choice + EOS, labels on the choice only).

    Returns ``None`` if the prompt is too long. Used by answer-choice accuracy
    (docs/algorithm.md#answer-choice-scoring).
    """
    prompt_ids = encode_prompt(example.prompt, tokenizer)
    out = []
    for choice in example.choices:
        enc = _join(
            prompt_ids, _encode_target(choice, tokenizer), tokenizer.eos_token_id, max_length
        )
        if enc is None:
            return None
        out.append(enc)
    return out


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a list of encoded sequences into ``input_ids``, ``attention_mask`` (and ``labels``).

    Returns:
        ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long, and ``labels`` (B, T) long when
        every item has labels.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    with_labels = sum("labels" in item for item in batch)
    if with_labels not in (0, len(batch)):
        raise ValueError(f"{with_labels} of {len(batch)} items have labels: all or none must")
    width = max(len(item["input_ids"]) for item in batch)
    ids, mask, labels = [], [], []
    for item in batch:
        pad = width - len(item["input_ids"])
        ids.append([pad_id] * pad + list(item["input_ids"]))
        mask.append([0] * pad + [1] * len(item["input_ids"]))
        if "labels" in item:
            labels.append([IGNORE_INDEX] * pad + list(item["labels"]))
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if len(labels) == len(batch):
        out["labels"] = torch.tensor(labels)
    return out
