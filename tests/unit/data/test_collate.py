"""Tokenization and collation (docs/algorithm.md#tokenization), byte-level tiny tokenizer."""

from __future__ import annotations

import pytest

from fedamole.data.collate import (
    IGNORE_INDEX,
    collate,
    encode_choices,
    encode_prompt,
    encode_train,
)
from fedamole.data.types import Example
from fedamole.models import tiny_tokenizer

EXAMPLE = Example(prompt="Q: 2+2?\nA:", response=" four", category="math")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_prompt_carries_bos(tok):
    ids = encode_prompt("hi", tok)
    assert ids[0] == tok.bos_token_id and len(ids) == 3  # <s> h i


def test_labels_masked_over_prompt_and_eos_at_end(tok):
    enc = encode_train(EXAMPLE, tok, max_length=64)
    n_prompt = len(encode_prompt(EXAMPLE.prompt, tok))
    target = tok(EXAMPLE.response, add_special_tokens=False)["input_ids"]
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc["labels"][n_prompt:] == [*target, tok.eos_token_id]
    assert enc["input_ids"][n_prompt:] == [*target, tok.eos_token_id]
    assert enc["input_ids"][-1] == tok.eos_token_id
    assert len(enc["input_ids"]) == len(enc["labels"]) == n_prompt + len(target) + 1


def test_truncation_overwrites_last_token_with_eos(tok):
    n_prompt = len(encode_prompt(EXAMPLE.prompt, tok))
    enc = encode_train(EXAMPLE, tok, max_length=n_prompt + 2)
    target = tok(EXAMPLE.response, add_special_tokens=False)["input_ids"]
    assert len(enc["input_ids"]) == n_prompt + 2
    assert enc["input_ids"][-2:] == [target[0], tok.eos_token_id]
    assert enc["labels"][-2:] == [target[0], tok.eos_token_id]


def test_too_long_prompt_returns_none(tok):
    n_prompt = len(encode_prompt(EXAMPLE.prompt, tok))
    assert encode_train(EXAMPLE, tok, max_length=n_prompt) is None
    assert encode_train(EXAMPLE, tok, max_length=n_prompt + 1) is not None
    choice = Example(prompt=EXAMPLE.prompt, response="yes", category="c", choices=("yes", "no"))
    assert encode_choices(choice, tok, max_length=n_prompt) is None


def test_collate_left_pads(tok):
    short = encode_train(Example("a", "b", "c"), tok, 64)
    long = encode_train(EXAMPLE, tok, 64)
    batch = collate([short, long], pad_id=tok.pad_token_id)
    width = len(long["input_ids"])
    pad = width - len(short["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert batch["input_ids"][0, :pad].tolist() == [tok.pad_token_id] * pad
    assert batch["input_ids"][0, pad:].tolist() == short["input_ids"]
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * len(short["input_ids"])
    assert batch["labels"][0, :pad].tolist() == [IGNORE_INDEX] * pad
    assert batch["attention_mask"][1].tolist() == [1] * width


def test_collate_without_labels(tok):
    batch = collate([{"input_ids": encode_prompt("abc", tok)}], pad_id=tok.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask"}


def test_choice_format_one_sequence_per_choice_labels_on_choice_only(tok):
    ex = Example(prompt="Sky blue?\n", response="Yes", category="c", choices=("Yes", "No", "Maybe"))
    encs = encode_choices(ex, tok, max_length=64)
    n_prompt = len(encode_prompt(ex.prompt, tok))
    assert len(encs) == 3
    for enc, choice in zip(encs, ex.choices, strict=True):
        choice_ids = tok(choice, add_special_tokens=False)["input_ids"]
        assert enc["input_ids"][:n_prompt] == encode_prompt(ex.prompt, tok)
        assert enc["labels"] == [IGNORE_INDEX] * n_prompt + [*choice_ids, tok.eos_token_id]
