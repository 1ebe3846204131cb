"""Local training (docs/algorithm.md#local-training).

- ``steps`` optimizer steps per round, each over ``batch_size`` examples, split into micro-batches
  whose gradients are accumulated; the loss is **token-weighted** over the whole batch (the sum of
  response-token NLLs divided by the batch's response-token count), so micro-batching never changes
  the gradient.
- A **fresh Adam** each round (betas, eps from config, no weight decay by default), lr constant
  within a round: ``lr * lr_decay ** (round - 1)`` (:func:`round_lr`). ``cfg.weight_decay`` is
  Adam's L2 penalty; an algorithm that needs AdamW's *decoupled* decay (FDLoRA) passes
  ``decoupled_weight_decay`` instead.
- The training order persists across rounds: :class:`BatchStream` walks a per-epoch permutation
  derived from ``(seed, client, epoch)`` and keeps only ``(epoch, position)`` as state, so a resumed
  run and the Flower engine draw the same batches.
- The load-balance term (docs/algorithm.md#load-balance-loss) is added through the MoLE collector;
  each micro-batch's term is weighted by its share of the batch's response tokens.
- Besides the round's mean, :class:`TrainResult` keeps every step's token-weighted loss, token
  count and learning rate; :meth:`TrainResult.step_metrics` turns them into the per-step metrics
  clients report (``train/step_loss@<step>``, docs/run-directory.md#metricsjsonl).
- Two CPU fast paths, each the same computation in another order (docs/results/performance.md):
  the lm head gets a contiguous input (:func:`contiguous_head_input`) and attention runs as
  float32 products on short rows (:mod:`fedamole.attention`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedamole.attention import training_attention
from fedamole.config import TrainConfig
from fedamole.data.collate import IGNORE_INDEX, Encoded, collate
from fedamole.federated.messages import step_key
from fedamole.inference import contiguous_head_input

__all__ = [
    "BatchStream",
    "TrainResult",
    "causal_lm_loss_sum",
    "contiguous_head_input",
    "local_train",
    "logits_window",
    "model_inputs",
    "round_lr",
]


def round_lr(base_lr: float, decay: float, rnd: int) -> float:
    """Learning rate of 1-based round ``rnd``: ``base_lr * decay ** (rnd - 1)``."""
    return base_lr * decay ** max(rnd - 1, 0)


class BatchStream:
    """An endless, resumable stream of training batches over one client's encoded examples.

    Epoch ``e`` visits the examples in ``default_rng([seed, client, e]).permutation(n)`` order; the
    state is just ``(epoch, position)``.
    """

    def __init__(self, examples: Sequence[Encoded], *, seed: int, client: int):
        if not examples:
            raise ValueError(f"client {client} has no training examples; check the partition")
        self.examples = examples
        self.seed, self.client = seed, client
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.client, self.epoch])
        return rng.permutation(len(self.examples))

    def take(self, count: int) -> list[Encoded]:
        """The next ``count`` examples, wrapping into a new epoch (reshuffled) when exhausted."""
        out = []
        for _ in range(count):
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.examples[int(self._order[self.position])])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Model keyword arguments for a left-padded batch, with explicit position ids.

    Position ids count real tokens only (``cumsum(mask) - 1``), so a left-padded sequence is
    processed exactly like the same sequence without padding.
    """
    mask = batch["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": mask,
        "position_ids": positions,
    }


def logits_window(labels: torch.Tensor) -> int:
    """How many trailing columns of a left-padded batch need logits: from the column before the
    earliest labelled one to the end (``logits_to_keep``). Labels follow the prompt, so they sit
    at the end of every row; the lm head, a fifth of a small model's compute, then runs on
    ~the response only.

    Args:
        labels: (B, T) with ``IGNORE_INDEX`` where unsupervised.
    """
    width = labels.shape[1]
    labelled = labels != IGNORE_INDEX  # (B, T)
    if not bool(labelled.any()):
        return width
    first = int(labelled.int().argmax(dim=-1)[labelled.any(dim=-1)].min())
    return min(width, width - first + 1)


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token NLLs over supervised positions, and their count.

    Args:
        logits: (B, K, V) for the last ``K`` columns (``K = T``: every column; see
            :func:`logits_window`).
        labels: (B, T) with ``IGNORE_INDEX`` where unsupervised.
    """
    keep = logits.shape[1]
    shift_logits = logits[:, :-1].float()  # (B, K-1, V)
    shift_labels = labels[:, labels.shape[1] - keep + 1 :].to(logits.device)  # (B, K-1)
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),  # (B*(K-1), V)
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((shift_labels != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training did.

    ``loss`` is the token-weighted mean of ``step_losses`` (weights ``step_tokens``): the sum of
    every step's response NLL over every step's response tokens.
    """

    loss: float  # token-weighted mean response NLL over the round
    balance: float  # mean load-balance term per step (already times the coefficient)
    tokens: int  # supervised tokens seen
    steps: int
    # per optimizer step, in order: token-weighted mean response NLL (NaN: no supervised token),
    # supervised tokens, learning rate used
    step_losses: tuple[float, ...] = ()
    step_tokens: tuple[int, ...] = ()
    step_lrs: tuple[float, ...] = ()

    def step_metrics(self, prefix: str = "train/step_") -> dict[str, float]:
        """Per-step client metrics, steps numbered from 1: ``<prefix>loss@<step>`` (left out for
        a step without supervised tokens, whose loss is undefined), ``<prefix>tokens@<step>`` and
        ``<prefix>lr@<step>`` (:func:`~fedamole.federated.messages.step_key`).

        Example: ``{"train/step_loss@1": 2.31, "train/step_tokens@1": 57, "train/step_lr@1":
        0.001, ...}``; the engines write them as ``metrics.jsonl`` records with a ``step`` field.
        """
        out: dict[str, float] = {}
        for step, (loss, tokens, lr) in enumerate(
            zip(self.step_losses, self.step_tokens, self.step_lrs, strict=True), 1
        ):
            if tokens:
                out[step_key(f"{prefix}loss", step)] = loss
            out[step_key(f"{prefix}tokens", step)] = tokens
            out[step_key(f"{prefix}lr", step)] = lr
        return out


BalanceContext = Callable[[torch.Tensor], contextlib.AbstractContextManager]


def local_train(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    stream: BatchStream,
    cfg: TrainConfig,
    *,
    lr: float,
    pad_id: int,
    balance: BalanceContext | None = None,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
    decoupled_weight_decay: float | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``params`` for ``cfg.steps`` optimizer steps with a fresh Adam (or AdamW).

    Args:
        model: the causal LM (adapters installed); put in train mode for the call and restored.
        params: the trainable parameters (the only ones the optimizer sees).
        stream: the client's persistent batch stream.
        cfg: steps, batch and micro-batch sizes, Adam settings, optional gradient clipping.
        lr: this round's learning rate (:func:`round_lr`).
        pad_id: the tokenizer's pad id.
        balance: a factory, called with the micro-batch's attention mask (B, T), of a context
            manager yielding an object with ``total() -> Tensor`` (the coefficient-weighted
            load-balance loss of the forwards run inside it), or ``None``.
        progress: optional wrapper of the step iterator (a progress bar).
        decoupled_weight_decay: when given, a fresh ``torch.optim.AdamW`` with this decoupled
            weight decay replaces Adam, and ``cfg.weight_decay`` is ignored.
        penalty: a term of the parameters added to every step's loss (HetLoRA's rank
            self-pruning regularizer), computed once per step after the micro-batches; not part
            of the reported loss.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the update must not be sent).
    """
    device = next(iter(params)).device
    if decoupled_weight_decay is None:
        opt = torch.optim.Adam(
            params, lr=lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(
            params,
            lr=lr,
            betas=cfg.adam_betas,
            eps=cfg.adam_eps,
            weight_decay=decoupled_weight_decay,
        )
    micro = cfg.micro_batch_size or cfg.batch_size
    was_training = model.training
    model.train()
    total_loss, total_bal, total_tokens = 0.0, 0.0, 0
    step_losses: list[float] = []
    step_tokens: list[int] = []
    step_lrs: list[float] = []
    steps = range(cfg.steps) if progress is None else progress(iter(range(cfg.steps)))
    fast = contextlib.ExitStack()  # the CPU fast paths (module docstring)
    try:
        fast.enter_context(contiguous_head_input(model))
        fast.enter_context(training_attention(model))
        for _ in steps:
            batch = stream.take(cfg.batch_size)
            n_tokens = sum(sum(1 for t in ex["labels"][1:] if t != IGNORE_INDEX) for ex in batch)
            denom = max(n_tokens, 1)
            step_nll = 0.0
            opt.zero_grad(set_to_none=True)
            for start in range(0, len(batch), micro):
                chunk = collate(batch[start : start + micro], pad_id)
                inputs = model_inputs(chunk, device)
                ctx = (
                    balance(inputs["attention_mask"])
                    if balance is not None
                    else contextlib.nullcontext()
                )
                with ctx as collector:
                    keep = logits_window(chunk["labels"])
                    logits = model(**inputs, logits_to_keep=keep).logits  # (b, keep, V)
                    nll, count = causal_lm_loss_sum(logits, chunk["labels"])
                    loss = nll / denom
                    if collector is not None:
                        bal = collector.total() * (count / denom)
                        loss = loss + bal
                        total_bal += float(bal.detach())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {float(loss)}; update discarded")
                loss.backward()
                nll_value = float(nll.detach())
                total_loss += nll_value
                step_nll += nll_value
            if penalty is not None:
                term = penalty()
                if not torch.isfinite(term):
                    raise FloatingPointError(f"training penalty is {float(term)}; update discarded")
                term.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            step_lrs.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            total_tokens += n_tokens
            step_losses.append(step_nll / n_tokens if n_tokens else math.nan)
            step_tokens.append(n_tokens)
    finally:
        fast.close()
        model.train(was_training)
        opt.zero_grad(set_to_none=True)
    mean = total_loss / max(total_tokens, 1)
    return TrainResult(
        loss=mean if total_tokens else math.nan,
        balance=total_bal / cfg.steps,
        tokens=total_tokens,
        steps=cfg.steps,
        step_losses=tuple(step_losses),
        step_tokens=tuple(step_tokens),
        step_lrs=tuple(step_lrs),
    )
