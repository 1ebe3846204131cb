"""The inference engine under evaluation: batched teacher-forced NLL and greedy decoding with a
shared-prefix key/value cache (docs/algorithm.md#evaluation).

It works on token ids (encoded rows, prompts); :mod:`fedamole.evaluation` turns examples into
them and scores the results.

Batches are left-padded. Position ids are passed as ``cumsum(attention_mask) - 1`` (clamped at
0), the convention of ``generate``: a plain forward in transformers 5 numbers positions
``0..T-1`` whatever the mask, which shifts the real tokens of a padded row. RoPE models are
invariant to that shift in exact arithmetic, models with absolute positions are not; with
explicit ids a padded row scores like the same row unpadded (tested to 1e-5 in float32).

**Shared prefix** (measured with ``fedamole bench round``, docs/results/performance.md). The rows
of a batch usually start with the same tokens (the prompt template is ~45 of ~55 prompt tokens on
the synthetic suite, all of them in Dolly and SNLI). That prefix runs once, its key/value cache is
repeated over the batch, and only each row's remainder is computed (positions continue from the
prefix; a left pad sits between prefix and remainder, masked). The result is the same computation
in another order (equal to ~1e-6 in float32). Models that cannot take a cache this way (the
prompt-learning wrapper: ``supports_prefix_cache = False``) run whole rows, and generate through
their own ``generate`` (:func:`generate_whole_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from fedamole.data.collate import IGNORE_INDEX, Encoded, collate

__all__ = [
    "Progress",
    "PromptPass",
    "batches",
    "contiguous_head_input",
    "generate_whole_rows",
    "greedy",
    "inference",
    "prefix_groups",
    "prompt_pass",
    "response_nll",
    "sequence_nll",
    "shares_prefixes",
]

Progress = Callable[[int], None]  # called with n as n more examples are done

# The key/value cache's keyword (and output field): `past_key_values` until transformers 5.2x
# renamed it `cache` (the old name still works there, with a FutureWarning).
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


# --------------------------------------------------------------------------------------------------
# Scoring sequences


@contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without autograd for the duration, the lm head's input contiguous
    (:func:`contiguous_head_input`); the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), contiguous_head_input(model):
            yield
    finally:
        model.train(was_training)


@contextmanager
def contiguous_head_input(model: nn.Module) -> Iterator[bool]:
    """Make the lm head's input contiguous inside the block; yields whether the model has an
    output embedding to hook. Local training and :func:`inference` both enter it.

    With ``logits_to_keep`` the head sees ``hidden[:, -K:]``, a strided view. For an input that
    requires a gradient and is not contiguous, ``torch.matmul`` does not fold ``(B, K, d)`` into
    ``(B*K, d)``: it expands the ``(V, d)`` weight to ``(B, d, V)``, copies it, and runs ``B``
    small products forward and again backward (~900 MB copied per step of 4 rows with SmolLM2's
    49k-word head). A contiguous ``(B, K, d)`` input (a copy of ``B*K*d`` numbers) takes one
    ``(B*K, d) @ (d, V)`` product each way. Same numbers, one GEMM instead of ``B``: rounding may
    differ in the last bits (docs/results/performance.md). Without autograd the strided input is
    slow too: scoring 16 eight-choice examples spent 14 s in the head alone (bf16, one thread).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Module):
        yield False
        return

    def contiguous(_module: nn.Module, args: tuple) -> tuple | None:
        if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
            return (args[0].contiguous(), *args[1:])
        return None

    handle = head.register_forward_pre_hook(contiguous)
    try:
        yield True
    finally:
        handle.remove()


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counted from each row's first real token; 0 on the left padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def shares_prefixes(model: torch.nn.Module) -> bool:
    """Whether rows may run after a cached prefix (not for ``supports_prefix_cache = False``)."""
    return bool(getattr(model, "supports_prefix_cache", True))


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prefix_groups(
    rows: Sequence[Sequence[int]], limits: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Split rows, in the given order, into runs that share a prefix computed once.

    A run's prefix is the tokens all its rows start with, at most each row's ``limit``; a run of
    one row shares nothing. The runs minimize the tokens computed (each prefix once plus every
    row's remainder), by dynamic programming over the cut points. Sorting the rows first
    (lexicographically) puts rows with a common prefix next to each other.

    Returns:
        ``(group of each row, prefix length of each group)``.
    """
    n = len(rows)
    lengths = [len(row) for row in rows]
    shared = [_common_length(rows[i], rows[i + 1]) for i in range(n - 1)]
    best, cut, plen = [0] + [0] * n, [0] * (n + 1), [0] * (n + 1)
    for j in range(1, n + 1):  # best split of rows[:j]; its last run is rows[i:j]
        prefix, total = limits[j - 1], 0
        best[j] = -1
        for i in range(j - 1, -1, -1):
            total += lengths[i]
            if i < j - 1:
                prefix = min(prefix, limits[i], shared[i])
            p = max(prefix, 0) if i < j - 1 else 0
            cost = best[i] + p + total - (j - i) * p
            if best[j] < 0 or cost < best[j]:
                best[j], cut[j], plen[j] = cost, i, p
    group = [0] * n
    prefixes: list[int] = []
    j = n
    runs = []
    while j > 0:
        runs.append((cut[j], j, plen[j]))
        j = cut[j]
    for start, stop, p in reversed(runs):
        group[start:stop] = [len(prefixes)] * (stop - start)
        prefixes.append(p)
    return group, prefixes


def _groups(
    model: torch.nn.Module, rows: Sequence[Encoded], limits: Sequence[int]
) -> tuple[list[int], list[int]]:
    """:func:`prefix_groups` of the rows' tokens; one group without a prefix for a model that
    cannot share prefixes."""
    if not shares_prefixes(model):
        return [0] * len(rows), [0]
    return prefix_groups([row["input_ids"] for row in rows], limits)


def _prefixed_batch(
    model: torch.nn.Module,
    rows: Sequence[Encoded],
    pad_id: int,
    group: Sequence[int],
    prefixes: Sequence[int],
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Model inputs for encoded ``rows`` after their shared prefixes (see the module docstring),
    and their ``labels`` (B, S) when the rows have labels.

    Row ``i`` belongs to group ``group[i]``, whose first ``prefixes[group[i]]`` tokens it shares
    (:func:`_groups`). Each group's prefix runs once, left-padded to the longest; the cache rows
    are then picked per row. ``input_ids`` and ``position_ids`` (B, S) hold each row's
    left-padded remainder, ``attention_mask`` (B, P + S) covers prefix and remainder. Groups with
    no prefix get plain left-padded rows.
    """
    device = model.device
    ids = [row["input_ids"] for row in rows]
    cut = [prefixes[g] for g in group]  # (B,) tokens of each row in the prefix
    rest = collate(
        [{k: v[c:] for k, v in row.items()} for row, c in zip(rows, cut, strict=True)], pad_id
    )
    mask = rest["attention_mask"].to(device)  # (B, S)
    inputs: dict[str, Any] = {}
    width = max(prefixes)
    if width:
        cached = [g for g, p in enumerate(prefixes) if p]  # groups with a prefix
        first = {g: group.index(g) for g in cached}
        heads = collate([{"input_ids": ids[first[g]][: prefixes[g]]} for g in cached], pad_id)
        head_mask = heads["attention_mask"].to(device)  # (G, P)
        out = model(
            input_ids=heads["input_ids"].to(device),
            attention_mask=head_mask,
            position_ids=_position_ids(head_mask),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(out, _CACHE)
        row_of = {g: k for k, g in enumerate(cached)}
        # Rows without a prefix take any cache row and mask all of it.
        cache.batch_select_indices(torch.tensor([row_of.get(g, 0) for g in group], device=device))
        prefix_mask = torch.stack(
            [head_mask[row_of[g]] if g in row_of else head_mask.new_zeros(width) for g in group]
        )  # (B, P)
        mask = torch.cat([prefix_mask, mask], dim=1)  # (B, P + S)
        inputs[_CACHE] = cache
    inputs.update(
        input_ids=rest["input_ids"].to(device),  # (B, S)
        attention_mask=mask,
        position_ids=_position_ids(mask)[:, width:],  # (B, S)
    )
    labels = rest["labels"].to(device) if "labels" in rest else None
    return inputs, labels


def sequence_nll(
    model: PreTrainedModel, rows: Sequence[Encoded], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (B,) float32 and number (B,) of the labelled tokens of encoded rows.

    Rows that share a prefix (which stops before the token that predicts a row's first label)
    run as one batch after it, the other rows as one plain left-padded batch: separate passes, so
    no row is padded to another group's remainder. Only the logits that predict labelled tokens
    are materialized (``logits_to_keep``): with left padding the labels sit at the end of every
    row.
    """
    limits = [next(i for i, t in enumerate(row["labels"]) if t != IGNORE_INDEX) - 1 for row in rows]
    group, prefixes = _groups(model, rows, limits)
    parts = [[i for i, g in enumerate(group) if g == k] for k, p in enumerate(prefixes) if p]
    parts.append([i for i, g in enumerate(group) if not prefixes[g]])
    total = torch.zeros(len(rows))
    count = torch.zeros(len(rows), dtype=torch.long)
    for part in (part for part in parts if part):
        prefix = prefixes[group[part[0]]]  # one group, or the rows that share nothing
        nll, n = _one_pass_nll(model, [rows[i] for i in part], pad_id, prefix)
        total[part], count[part] = nll.cpu(), n.cpu()
    return total, count


def _one_pass_nll(
    model: PreTrainedModel, rows: Sequence[Encoded], pad_id: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_nll` of rows that all share their first ``prefix`` tokens, in one pass."""
    inputs, labels = _prefixed_batch(model, rows, pad_id, [0] * len(rows), [prefix])
    width = labels.shape[1]
    first = int((labels != IGNORE_INDEX).int().argmax(dim=-1).min())  # earliest labelled column
    keep = min(width, width - first + 1)
    logits = model(**inputs, logits_to_keep=keep).logits
    # logits (B, keep, V): logits[:, k] predicts column width - keep + k + 1
    targets = labels[:, width - keep + 1 :]  # (B, keep - 1)
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2),  # (B, V, keep - 1)
        targets,
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )  # (B, keep - 1)
    return nll.sum(dim=-1), (targets != IGNORE_INDEX).sum(dim=-1)


def batches(items: Sequence, size: int, progress: Progress | None = None) -> Iterator[Sequence]:
    """``items`` in batches of ``size``; ``progress(len(batch))`` once the caller is done with each
    batch (when it asks for the next one)."""
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        yield batch
        if progress is not None:
            progress(len(batch))


# --------------------------------------------------------------------------------------------------
# Generation


class PromptPass(NamedTuple):
    """A batch of prompts run once (:func:`prompt_pass`): what decoding and the response's
    teacher-forced NLL continue from."""

    cache: Any  # the prompts' key/value cache (extended in place by what continues from it)
    mask: torch.Tensor  # (B, T) the prompts' attention mask
    position: torch.Tensor  # (B,) each prompt's last position
    last: torch.Tensor  # (B, V) logits at each prompt's last token (they predict the next one)


def prompt_pass(model: PreTrainedModel, prompts: Sequence[list[int]], pad_id: int) -> PromptPass:
    """Run a batch of prompts (token ids) once, after their shared prefixes; no gradients are
    taken here (wrap the call in :func:`inference`)."""
    rows = [{"input_ids": ids} for ids in prompts]
    limits = [len(r["input_ids"]) - 1 for r in rows]
    inputs, _ = _prefixed_batch(model, rows, pad_id, *_groups(model, rows, limits))
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    cache, last = getattr(out, _CACHE), out.logits[:, -1]  # last: (B, V)
    mask, position = inputs["attention_mask"], inputs["position_ids"][:, -1]  # (B, T), (B,)
    return PromptPass(cache, mask, position, last)


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


def response_nll(
    model: PreTrainedModel, prompt: PromptPass, targets: Sequence[Sequence[int]], pad_id: int
) -> tuple[float, int]:
    """Summed NLL of ``targets`` (response + EOS per row) after the prompts of ``prompt``, and the
    number of target tokens; one teacher-forced pass. Extends ``prompt.cache`` in place (give a
    copy when decoding continues from it).

    Args:
        prompt: the prompts' pass; ``prompt.last`` predicts each row's first target.
        targets: each row's target tokens, right-padded here.
    """
    cache, mask, position, last = prompt
    width = max(len(t) for t in targets)
    logits = last[:, None]  # (B, 1, V)
    if width > 1:  # feed every target but the last; right padding stays after the real tokens
        feed = torch.tensor([list(t[:-1]) + [pad_id] * (width - len(t)) for t in targets])
        feed_mask = torch.tensor([[1] * (len(t) - 1) + [0] * (width - len(t)) for t in targets])
        steps = torch.arange(1, width, device=mask.device)[None]  # (1, W - 1)
        out = model(
            input_ids=feed.to(mask.device),  # (B, W - 1)
            attention_mask=torch.cat([mask, feed_mask.to(mask)], dim=1),  # (B, T + W - 1)
            position_ids=position[:, None] + steps,  # (B, W - 1)
            **{_CACHE: cache},
            use_cache=True,
        )
        logits = torch.cat([logits, out.logits], dim=1)  # (B, W, V)
    labels = torch.tensor(
        [list(t) + [IGNORE_INDEX] * (width - len(t)) for t in targets], device=mask.device
    )  # (B, W)
    nll = F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return float(nll.sum()), int((labels != IGNORE_INDEX).sum())


def greedy(
    model: PreTrainedModel, prompt: PromptPass, max_new_tokens: int, eos: int
) -> list[list[int]]:
    """Greedy decoding after the prompts of ``prompt`` (its cache is extended in place): the
    tokens of each row before its first EOS, at most ``max_new_tokens`` steps, stopping when
    every row has ended."""
    cache, mask, position, logits = prompt
    batch = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        chosen = logits.argmax(dim=-1)  # (B,) ties: the first, as `generate`
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                if token == eos:
                    done[row] = True
                else:
                    tokens[row].append(token)
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)  # (B, T + 1)
        position = position + 1
        out = model(
            input_ids=chosen[:, None],
            attention_mask=mask,
            position_ids=position[:, None],
            **{_CACHE: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = getattr(out, _CACHE), out.logits[:, -1]  # (B, V)
    return tokens


def generate_whole_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy decoding through the model's ``generate`` on left-padded whole rows (for models that
    cannot share prefixes); the tokens before each row's first EOS."""
    config = _greedy_config(tokenizer, max_new_tokens)
    eos = tokenizer.eos_token_id
    batch = collate([{"input_ids": ids} for ids in prompts], tokenizer.pad_token_id)
    with _only_generation_config(model, config):
        out = model.generate(
            input_ids=batch["input_ids"].to(model.device),  # (B, T)
            attention_mask=batch["attention_mask"].to(model.device),  # (B, T)
            generation_config=config,
        )  # (B, T + new)
    new = out[:, batch["input_ids"].shape[1] :].tolist()  # (B, new)
    return [ids[: ids.index(eos)] if eos in ids else ids for ids in new]
