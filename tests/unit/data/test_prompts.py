"""Prompt templates are the exact strings of docs/algorithm.md#prompt-templates."""

from __future__ import annotations

from fedamole.data.prompts import (
    SNLI_CHOICES,
    SNLI_LABELS,
    alpaca_prompt,
    snli_prompt,
    soft_prompt_init_text,
)


def test_alpaca_with_context_is_exact():
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
        "Add.\n\n### Input:\n2 + 3\n\n### Response:\n"
    )
    assert alpaca_prompt("Add.", "2 + 3") == expected


def test_alpaca_without_context_is_exact():
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\n"
    )
    assert alpaca_prompt("Name a color.") == expected
    assert alpaca_prompt("Name a color.", "") == expected


def test_snli_template_and_choices():
    assert snli_prompt("A man sleeps .", "A man rests .") == (
        'Suppose A man sleeps . Can we infer that "A man rests ."? Yes, No, or Maybe?\n'
    )
    assert SNLI_CHOICES == ("Yes", "Maybe", "No")
    assert SNLI_LABELS == ("entailment", "neutral", "contradiction")


def test_soft_prompt_texts_differ_by_dataset():
    assert "hypothesis" in soft_prompt_init_text("snli")
    assert soft_prompt_init_text("dolly") == soft_prompt_init_text("natural_instructions")
    assert "instruction" in soft_prompt_init_text("dolly")
