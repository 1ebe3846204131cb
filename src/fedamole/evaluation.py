"""Evaluation: choice accuracy, greedy generation + ROUGE-L, eval loss, summaries (SPEC.md 5.7).

- **Answer-choice tasks** (SNLI) are scored without generation: each choice is appended to the
  prompt in the training format (SPEC.md 5.4), its mean token NLL over the choice tokens *and EOS*
  is computed, and the argmin is the prediction (ties go to the first choice).
- **Free-text tasks** (Dolly, NI) are decoded greedily (``num_beams=1``, no sampling,
  ``max_new_tokens`` from the config, stop at EOS per sequence); the prompt is stripped, the new
  tokens are decoded with ``skip_special_tokens=True`` and scored against the example's response
  with the ROUGE-L F of the ``rouge==1.0.1`` package (re-implemented in :mod:`fedamole._rouge`) or
  of Google's ``rouge_score``.
- **Client averaging** is unweighted (the paper's); **across rounds** the best (max) or the last.

Reference quirks: with a generation batch size above 1 the reference scores only the first item
of each batch (its runs use batch size 1); we batch and score *every* item. Its empty hypotheses
score 0; so do ours, and so does any text without a word (see :mod:`fedamole._rouge`).

Batches are left-padded. Position ids are passed as ``cumsum(attention_mask) - 1`` (clamped at
0), the convention of ``generate``: a plain forward in transformers 5 numbers positions
``0..T-1`` whatever the mask, which shifts the real tokens of a padded row. RoPE models are
invariant to that shift in exact arithmetic, models with absolute positions are not; with
explicit ids a padded row scores like the same row unpadded (tested to 1e-5 in float32).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from fedamole._rouge import rouge_l
from fedamole.config import EvalConfig
from fedamole.data.collate import IGNORE_INDEX, collate, encode_choices, encode_prompt, encode_train
from fedamole.data.types import Example

__all__ = [
    "choice_correct",
    "evaluate_examples",
    "generate_responses",
    "mean_loss",
    "rouge_l",
    "score_choices",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Scoring sequences


@contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without autograd for the duration; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counted from each row's first real token; 0 on the left padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _sequence_nll(
    model: PreTrainedModel, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (B,) float32 and number (B,) of the labelled tokens of a left-padded batch.

    Only the logits that predict labelled tokens are materialized (``logits_to_keep``): with left
    padding the labels sit at the end of every row, so the last ``T - first + 1`` positions suffice.
    """
    device = model.device
    input_ids = batch["input_ids"].to(device)  # (B, T)
    attention_mask = batch["attention_mask"].to(device)  # (B, T)
    labels = batch["labels"].to(device)  # (B, T)
    width = labels.shape[1]
    first = int((labels != IGNORE_INDEX).int().argmax(dim=-1).min())  # earliest labelled column
    keep = min(width, width - first + 1)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_position_ids(attention_mask),
        logits_to_keep=keep,
    ).logits  # (B, keep, V): logits[:, k] predicts column width - keep + k + 1
    targets = labels[:, width - keep + 1 :]  # (B, keep - 1)
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2),  # (B, V, keep - 1)
        targets,
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )  # (B, keep - 1)
    return nll.sum(dim=-1), (targets != IGNORE_INDEX).sum(dim=-1)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _correct_index(example: Example) -> int:
    if example.response not in example.choices:
        raise ValueError(
            f"answer-choice example has response {example.response!r} not among its choices "
            f"{example.choices!r}; its response must be one of the choices"
        )
    return example.choices.index(example.response)


def score_choices(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
) -> list[list[float] | None]:
    """Mean NLL per choice token (EOS included) of every choice of every example (SPEC.md 5.7).

    All choices of ``batch_size`` examples go into one left-padded batch (so a batch holds
    ``batch_size * len(choices)`` sequences). Runs in eval mode without gradients.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (pad and EOS ids are read from it).
        examples: answer-choice examples (``example.is_choice``).
        batch_size: examples per forward pass.
        max_length: the truncation length of the training format (SPEC.md 5.4).

    Returns:
        One list of per-choice mean NLLs per example, in the order of ``example.choices``; ``None``
        for an example whose prompt is ``>= max_length`` tokens (skipped).

    Raises:
        ValueError: if an example has no choices.
    """
    for example in examples:
        if not example.is_choice:
            raise ValueError(f"example {example.prompt[:40]!r}... has no `choices`; use generation")
    encoded = [encode_choices(example, tokenizer, max_length) for example in examples]
    kept = [i for i, enc in enumerate(encoded) if enc is not None]
    scores: list[list[float] | None] = [None] * len(examples)
    with _inference(model):
        for group in _batches(kept, batch_size):
            sequences = [seq for i in group for seq in encoded[i]]
            total, count = _sequence_nll(model, collate(sequences, tokenizer.pad_token_id))
            mean = (total / count).tolist()  # (sum of choices in the group,)
            for i in group:
                n = len(examples[i].choices)
                scores[i], mean = mean[:n], mean[n:]
    return scores


def choice_correct(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
) -> list[bool | None]:
    """Whether the lowest-NLL choice is the response, per example; ``None`` when skipped.

    See :func:`score_choices` for the arguments; ties go to the first choice.
    """
    scores = score_choices(model, tokenizer, examples, batch_size=batch_size, max_length=max_length)
    return [
        None
        if nll is None
        else min(range(len(nll)), key=nll.__getitem__) == _correct_index(example)
        for example, nll in zip(examples, scores, strict=True)
    ]


def _loss_sums(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
) -> tuple[float, int]:
    encoded = [
        enc for ex in examples if (enc := encode_train(ex, tokenizer, max_length)) is not None
    ]
    total, count = 0.0, 0
    with _inference(model):
        for group in _batches(encoded, batch_size):
            nll, n = _sequence_nll(model, collate(group, tokenizer.pad_token_id))
            total, count = total + float(nll.sum()), count + int(n.sum())
    return total, count


def mean_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
) -> float:
    """Token-weighted mean NLL of the responses (+EOS) in the training format (SPEC.md 5.4).

    Examples whose prompt is ``>= max_length`` tokens are skipped, as in training.

    Raises:
        ValueError: if no example can be encoded.
    """
    total, count = _loss_sums(
        model, tokenizer, examples, batch_size=batch_size, max_length=max_length
    )
    if count == 0:
        raise ValueError(f"no example has a prompt shorter than `max_length` ({max_length})")
    return total / count


# --------------------------------------------------------------------------------------------------
# Generation


@contextmanager
def _only_generation_config(model: PreTrainedModel, config: GenerationConfig) -> Iterator[None]:
    """Make ``config`` the model's generation config for the duration.

    transformers 5 fills every field left ``None`` in the config passed to ``generate`` from
    ``model.generation_config`` (a checkpoint's sampling settings, repetition penalty, suppressed
    tokens...). Swapping it in leaves only transformers' neutral global defaults to fill the gaps.
    """
    previous = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = previous


def _greedy_config(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_new_tokens: int,
    max_length: int,
) -> list[str | None]:
    """Greedy continuations of the prompts, decoded without the prompt and special tokens.

    Left-padded batches, KV cache, at most ``max_new_tokens`` new tokens, each sequence stopping
    at its first EOS. Runs in eval mode without gradients; the model's own generation config is
    ignored.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (pad, EOS and BOS ids are read from it).
        examples: the examples whose ``prompt`` is continued.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: generation budget per prompt.
        max_length: prompts of ``>= max_length`` tokens are skipped (SPEC.md 5.4).

    Returns:
        The decoded text per example, ``None`` for a skipped one.
    """
    prompts = [encode_prompt(example.prompt, tokenizer) for example in examples]
    kept = [i for i, ids in enumerate(prompts) if len(ids) < max_length]
    texts: list[str | None] = [None] * len(examples)
    config = _greedy_config(tokenizer, max_new_tokens)
    eos = tokenizer.eos_token_id
    with _inference(model), _only_generation_config(model, config):
        for group in _batches(kept, batch_size):
            batch = collate([{"input_ids": prompts[i]} for i in group], tokenizer.pad_token_id)
            out = model.generate(
                input_ids=batch["input_ids"].to(model.device),  # (B, T)
                attention_mask=batch["attention_mask"].to(model.device),  # (B, T)
                generation_config=config,
            )  # (B, T + new)
            new = out[:, batch["input_ids"].shape[1] :].tolist()  # (B, new)
            for i, ids in zip(group, new, strict=True):
                ids = ids[: ids.index(eos)] if eos in ids else ids
                texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
    return texts


# --------------------------------------------------------------------------------------------------
# One evaluation set


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    cfg: EvalConfig,
    *,
    max_length: int,
) -> dict[str, float]:
    """Score one client's evaluation examples (SPEC.md 5.7).

    Args:
        model: the (personalized) causal LM; its train/eval mode is restored afterwards.
        tokenizer: its tokenizer.
        examples: answer-choice and/or free-text examples.
        cfg: batch size, generation budget and ROUGE implementation.
        max_length: examples whose prompt is ``>= max_length`` tokens are skipped.

    Returns:
        ``accuracy`` (mean over answer-choice examples), ``rouge_l`` (mean F over free-text
        examples), ``score`` (mean over all scored examples of 1/0 or the ROUGE-L F), ``loss``
        (token-weighted response NLL, :func:`mean_loss`), ``num_examples`` (scored) and
        ``num_skipped``. A metric is absent when no example of its kind was scored.
    """
    choice = [ex for ex in examples if ex.is_choice]
    text = [ex for ex in examples if not ex.is_choice]
    kw = dict(batch_size=cfg.batch_size, max_length=max_length)
    correct = [c for c in choice_correct(model, tokenizer, choice, **kw) if c is not None]
    hyps = generate_responses(model, tokenizer, text, max_new_tokens=cfg.max_new_tokens, **kw)
    rouge = [
        rouge_l(hyp, ex.response, impl=cfg.rouge_impl)
        for ex, hyp in zip(text, hyps, strict=True)
        if hyp is not None
    ]
    per_example = [float(c) for c in correct] + rouge
    out: dict[str, float] = {
        "num_examples": len(per_example),
        "num_skipped": len(examples) - len(per_example),
    }
    if correct:
        out["accuracy"] = sum(correct) / len(correct)
    if rouge:
        out["rouge_l"] = sum(rouge) / len(rouge)
    if per_example:
        out["score"] = sum(per_example) / len(per_example)
    total, count = _loss_sums(model, tokenizer, examples, **kw)
    if count:
        out["loss"] = total / count
    if out["num_skipped"]:
        log.info(
            "skipped %d example(s) with a prompt of >= %d tokens", out["num_skipped"], max_length
        )
    return out
