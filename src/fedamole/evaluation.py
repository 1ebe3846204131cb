"""Evaluation metrics: choice accuracy, greedy generation + ROUGE-L, eval loss, one client's
evaluation set (docs/algorithm.md#evaluation), on the inference engine of :mod:`fedamole.inference`
(batching, shared-prefix key/value cache, greedy decoding).

- **Answer-choice tasks** (SNLI) are scored without generation: each choice is appended to the
  prompt in the training format (docs/algorithm.md#tokenization), its mean token NLL over the choice
  tokens *and EOS* is computed, and the argmin is the prediction (ties go to the first choice).
- **Free-text tasks** (Dolly, NI) are decoded greedily (``num_beams=1``, no sampling,
  ``max_new_tokens`` from the config, stop at EOS per sequence); the prompt is stripped, the new
  tokens are decoded with ``skip_special_tokens=True`` and scored against the example's response
  with the ROUGE-L F of the ``rouge==1.0.1`` package (re-implemented in :mod:`fedamole._rouge`) or
  of Google's ``rouge_score``.
- **Client averaging** is unweighted (the paper's); **across rounds** the best (max) or the last.

Reference quirks: with a generation batch size above 1 the reference scores only the first item
of each batch (its runs use batch size 1); we batch and score *every* item. Its empty hypotheses
score 0; so do ours, and so does any text without a word (see :mod:`fedamole._rouge`).

**Speed (measured with** ``fedamole bench round``, docs/results/performance.md).
- *One pass per example.* The test loss of an answer-choice example is its correct choice's NLL,
  which scoring has already computed (the same tokens in the same training format); a free-text
  example's test loss comes from the prompt pass its generation starts from.
- *Token-sorted batches.* Examples are batched in the order of their tokens (results are put back
  in order), so rows that share a prefix sit together and the engine computes that prefix once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole._rouge import rouge_l
from fedamole.config import EvalConfig
from fedamole.data.collate import encode_choices, encode_prompt, encode_train
from fedamole.data.types import Example
from fedamole.inference import (
    Progress,
    batches,
    generate_whole_rows,
    greedy,
    inference,
    prompt_pass,
    response_nll,
    sequence_nll,
    shares_prefixes,
)

__all__ = [
    "ChoiceNLL",
    "choice_correct",
    "evaluate_examples",
    "generate_responses",
    "mean_loss",
    "prediction_record",
    "rouge_l",
    "score_choices",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Scoring


def _correct_index(example: Example) -> int:
    if example.response not in example.choices:
        raise ValueError(
            f"answer-choice example has response {example.response!r} not among its choices "
            f"{example.choices!r}; its response must be one of the choices"
        )
    return example.choices.index(example.response)


class ChoiceNLL(NamedTuple):
    """Per-choice NLLs of one answer-choice example, in the order of ``example.choices``."""

    mean: list[float]  # mean NLL per choice token (EOS included)
    total: list[float]  # summed NLL
    count: list[int]  # labelled tokens (choice + EOS)


def _choice_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
    progress: Progress | None = None,
) -> list[ChoiceNLL | None]:
    """:class:`ChoiceNLL` of every example, ``None`` for one whose prompt is too long; see
    :func:`score_choices`. ``progress(n)`` is called as each batch of ``n`` examples is done."""
    for example in examples:
        if not example.is_choice:
            raise ValueError(f"example {example.prompt[:40]!r}... has no `choices`; use generation")
    encoded = [encode_choices(example, tokenizer, max_length) for example in examples]
    kept = [i for i, enc in enumerate(encoded) if enc is not None]
    kept.sort(key=lambda i: encoded[i][0]["input_ids"])  # token order: shared prefixes adjacent
    scores: list[ChoiceNLL | None] = [None] * len(examples)
    with inference(model):
        for group in batches(kept, batch_size, progress):
            sequences = [seq for i in group for seq in encoded[i]]
            total, count = sequence_nll(model, sequences, tokenizer.pad_token_id)
            mean = (total / count).tolist()  # (sum of choices in the group,)
            total_list, count_list, start = total.tolist(), count.tolist(), 0
            for i in group:
                stop = start + len(examples[i].choices)
                scores[i] = ChoiceNLL(
                    mean[start:stop], total_list[start:stop], count_list[start:stop]
                )
                start = stop
    return scores


def score_choices(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
) -> list[list[float] | None]:
    """Mean NLL per choice token (EOS included) of every choice of every example
    (docs/algorithm.md#answer-choice-scoring).

    All choices of ``batch_size`` examples (taken in token order) go into one batch (so a
    batch holds ``batch_size * len(choices)`` sequences), after their shared prefix. Runs in eval
    mode without gradients.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (pad and EOS ids are read from it).
        examples: answer-choice examples (``example.is_choice``).
        batch_size: examples per forward pass.
        max_length: the truncation length of the training format.

    Returns:
        One list of per-choice mean NLLs per example, in the order of ``example.choices``; ``None``
        for an example whose prompt is ``>= max_length`` tokens (skipped).

    Raises:
        ValueError: if an example has no choices.
    """
    scores = _choice_nll(model, tokenizer, examples, batch_size=batch_size, max_length=max_length)
    return [None if s is None else s.mean for s in scores]


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)  # ties: the first


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
        None if nll is None else _argmin(nll) == _correct_index(example)
        for example, nll in zip(examples, scores, strict=True)
    ]


def _loss_sums(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
    progress: Progress | None = None,
) -> tuple[float, int]:
    encoded = [
        enc for ex in examples if (enc := encode_train(ex, tokenizer, max_length)) is not None
    ]
    encoded.sort(key=lambda enc: enc["input_ids"])  # token order: shared prefixes adjacent
    total, count = 0.0, 0
    with inference(model):
        for group in batches(encoded, batch_size, progress):
            nll, n = sequence_nll(model, group, tokenizer.pad_token_id)
            total, count = total + float(nll.sum()), count + int(n.sum())
    return total, count


def mean_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_length: int,
    progress: Progress | None = None,
) -> float:
    """Token-weighted mean NLL of the responses (+EOS) in the training format
    (docs/algorithm.md#tokenization).

    Examples whose prompt is ``>= max_length`` tokens are skipped, as in training.
    ``progress(n)``, when given, is called as each batch of ``n`` examples is done.

    Raises:
        ValueError: if no example can be encoded.
    """
    total, count = _loss_sums(
        model, tokenizer, examples, batch_size=batch_size, max_length=max_length, progress=progress
    )
    if count == 0:
        raise ValueError(f"no example has a prompt shorter than `max_length` ({max_length})")
    return total / count


# --------------------------------------------------------------------------------------------------
# Generation


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

    Batches of prompts (in token order, after their shared prefixes), KV cache, at most
    ``max_new_tokens`` new tokens, each sequence stopping at its first EOS: the argmax at every
    step, as ``generate`` with ``do_sample=False, num_beams=1`` gives, and never the model's own
    generation config. Runs in eval mode without gradients.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (pad and EOS ids are read from it).
        examples: the examples whose ``prompt`` is continued.
        batch_size: prompts per batch.
        max_new_tokens: generation budget per prompt.
        max_length: prompts of ``>= max_length`` tokens are skipped.

    Returns:
        The decoded text per example, ``None`` for a skipped one.
    """
    texts, _, _ = _free_text(
        model,
        tokenizer,
        examples,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_length=max_length,
        with_loss=False,
    )
    return texts


def _free_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_new_tokens: int,
    max_length: int,
    with_loss: bool,
    progress: Progress | None = None,
) -> tuple[list[str | None], float, int]:
    """Greedy texts and, ``with_loss``, the summed teacher-forced NLL (and its token count) of the
    responses in the training format, from one pass over each prompt: its cache serves both the
    response's teacher-forced pass and generation."""
    prompts = [encode_prompt(example.prompt, tokenizer) for example in examples]
    kept = sorted(
        (i for i, ids in enumerate(prompts) if len(ids) < max_length), key=prompts.__getitem__
    )
    texts: list[str | None] = [None] * len(examples)
    total, count = 0.0, 0
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if not shares_prefixes(model):  # whole rows through `generate` (the prompt-learning wrapper)
        with inference(model):
            for group in batches(kept, batch_size, progress):
                new = generate_whole_rows(
                    model, tokenizer, [prompts[i] for i in group], max_new_tokens
                )
                for i, ids in zip(group, new, strict=True):
                    texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
        if with_loss:
            total, count = _loss_sums(
                model, tokenizer, examples, batch_size=batch_size, max_length=max_length
            )
        return texts, total, count
    with inference(model):
        for group in batches(kept, batch_size, progress):
            prompt = prompt_pass(model, [prompts[i] for i in group], pad)
            if with_loss:
                targets = [
                    encode_train(examples[i], tokenizer, max_length)["input_ids"][len(prompts[i]) :]
                    for i in group
                ]
                # a copy of the cache: decoding starts from the prompts alone, not the responses
                own = prompt._replace(cache=copy.deepcopy(prompt.cache))
                nll, n = response_nll(model, own, targets, pad)
                total, count = total + nll, count + n
            new = greedy(model, prompt, max_new_tokens, eos)
            for i, ids in zip(group, new, strict=True):
                texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
    return texts, total, count


# --------------------------------------------------------------------------------------------------
# One evaluation set


def prediction_record(
    index: int, example: Example, answer: tuple[str, float] | None
) -> dict[str, Any]:
    """One example's result as ``predictions.jsonl`` holds it (docs/run-directory.md):
    ``example`` (its index in the evaluated split), ``answer`` (the chosen choice, or the
    generated text), ``score`` (1/0, or the ROUGE-L F) and, for an answer choice, ``correct``;
    ``{"example": i, "skipped": true}`` for an example whose prompt was too long."""
    if answer is None:
        return {"example": index, "skipped": True}
    text, score = answer
    record: dict[str, Any] = {"example": index, "answer": text, "score": score}
    if example.is_choice:
        record["correct"] = score == 1.0
    return record


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    cfg: EvalConfig,
    *,
    max_length: int,
    progress: Progress | None = None,
    per_example: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Score one client's evaluation examples (docs/algorithm.md#evaluation).

    Args:
        model: the (personalized) causal LM; its train/eval mode is restored afterwards.
        tokenizer: its tokenizer.
        examples: answer-choice and/or free-text examples.
        cfg: batch size, generation budget and ROUGE implementation.
        max_length: examples whose prompt is ``>= max_length`` tokens are skipped.
        progress: called with ``n`` as each batch of ``n`` examples is done (a progress bar).
        per_example: if given, one record per example is appended to it, in the order of
            ``examples`` (:func:`prediction_record`): what the model answered and its score. The
            mean ``score`` of the answer-choice records, then of the free-text ones, summed in
            that order, is the returned ``score`` exactly.

    Returns:
        ``accuracy`` (mean over answer-choice examples), ``rouge_l`` (mean F over free-text
        examples), ``score`` (mean over all scored examples of 1/0 or the ROUGE-L F), ``loss``
        (token-weighted response NLL, :func:`mean_loss`), ``num_examples`` (scored) and
        ``num_skipped``. A metric is absent when no example of its kind was scored.
    """
    choice_at = [i for i, ex in enumerate(examples) if ex.is_choice]  # indices in examples
    text_at = [i for i, ex in enumerate(examples) if not ex.is_choice]
    choice, text = [examples[i] for i in choice_at], [examples[i] for i in text_at]
    kw = dict(batch_size=cfg.batch_size, max_length=max_length, progress=progress)
    correct, total, count = [], 0.0, 0
    answers: dict[int, tuple[str, float]] = {}  # index in examples -> (answer, score)
    scored = _choice_nll(model, tokenizer, choice, **kw)
    for index, example, nll in zip(choice_at, choice, scored, strict=True):
        if nll is not None:  # its test loss is the correct choice's NLL: no pass of its own
            right, picked = _correct_index(example), _argmin(nll.mean)
            correct.append(picked == right)
            total, count = total + nll.total[right], count + nll.count[right]
            answers[index] = (example.choices[picked], float(picked == right))
    hyps, text_total, text_count = _free_text(
        model, tokenizer, text, max_new_tokens=cfg.max_new_tokens, with_loss=True, **kw
    )
    rouge = []
    for index, ex, hyp in zip(text_at, text, hyps, strict=True):
        if hyp is not None:
            rouge.append(rouge_l(hyp, ex.response, impl=cfg.rouge_impl))
            answers[index] = (hyp, rouge[-1])
    if per_example is not None:
        per_example.extend(
            prediction_record(i, ex, answers.get(i)) for i, ex in enumerate(examples)
        )
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
    total, count = total + text_total, count + text_count
    if count:
        out["loss"] = total / count
    if out["num_skipped"]:
        log.info(
            "skipped %d example(s) with a prompt of >= %d tokens", out["num_skipped"], max_length
        )
    return out
