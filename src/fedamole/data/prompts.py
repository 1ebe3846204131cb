"""Prompt templates, as exact strings (docs/algorithm.md#prompt-templates).

- Dolly-15K, Natural Instructions, local files and the synthetic suite use the Alpaca template: one
  variant with an ``### Input:`` block when the context is non-empty, one without.
- SNLI uses a one-line question; its answer choices are indexed by the NLI label, so label 0
  (entailment) is "Yes", 1 (neutral) "Maybe" and 2 (contradiction) "No".

Targets are the response followed by EOS; appending EOS is the collator's job (``collate.py``),
so nothing here adds it. A context counts as empty only when it is the empty string, as in the
reference: a context of blanks still gets the ``### Input:`` block.

The soft-prompt initialisation texts are used only by the prompt-tuning baseline.
"""

from __future__ import annotations

__all__ = [
    "ALPACA_NO_INPUT",
    "ALPACA_WITH_INPUT",
    "SNLI_CHOICES",
    "SNLI_LABELS",
    "SNLI_TEMPLATE",
    "alpaca_prompt",
    "snli_prompt",
    "soft_prompt_init_text",
]

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
SNLI_TEMPLATE = 'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'

SNLI_CHOICES: tuple[str, ...] = ("Yes", "Maybe", "No")
"""Answer choices indexed by the SNLI label (0 entailment, 1 neutral, 2 contradiction)."""

SNLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
"""Label names indexed by the SNLI label; used as the category for label skew."""

_SOFT_PROMPT_SNLI = (
    "Based on the premise, determine if the hypothesis logically follows. Answer with ‘Yes’ if it "
    "does, ‘No’ if it doesn’t, or ‘Maybe’ if uncertain."
)
_SOFT_PROMPT_ALPACA = (
    "Generate a clear and direct response that accurately fulfills the task based on the provided "
    "instruction and any given context."
)


def alpaca_prompt(instruction: str, context: str = "") -> str:
    """Render the Alpaca template.

    Args:
        instruction: the task description.
        context: the task input; the ``### Input:`` block is added only when it is non-empty.

    Returns:
        The prompt, ending with ``"### Response:\\n"``.
    """
    if context:
        return ALPACA_WITH_INPUT.format(instruction=instruction, context=context)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def snli_prompt(premise: str, hypothesis: str) -> str:
    """Render the SNLI question for one premise/hypothesis pair."""
    return SNLI_TEMPLATE.format(premise=premise, hypothesis=hypothesis)


def soft_prompt_init_text(dataset: str) -> str:
    """The text that initialises a soft prompt (prompt-tuning baseline) for ``dataset``."""
    return _SOFT_PROMPT_SNLI if dataset == "snli" else _SOFT_PROMPT_ALPACA
