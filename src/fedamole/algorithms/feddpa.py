"""FedDPA: a federated global LoRA adapter plus a private local one, mixed per test instance.

Follows Yang, Long, Shen, Jiang and Blumenstein, "Dual-Personalizing Adapter for Federated
Foundation Models" (NeurIPS 2024, arXiv 2403.19211), in its iterative variant FedDPA-T, with the
behaviour of the authors' code (github.com/Lydia-yang/FedDPA) where the paper leaves a choice:

- Two LoRA adapters on the frozen backbone: the *global* one (peft's ``default``) is trained
  locally, uploaded and averaged like FedIT's; the *local* one never leaves the client
  (``ctx.state["lora_local"]``).
- Each round, on each client: train the local adapter for ``baselines.feddpa.local_steps`` steps
  (default ``train.steps``) with the received global adapter frozen, then the global adapter for
  ``train.steps`` steps with the local one frozen. In both phases the model is
  ``W0 x + (1 - a) dW_global x + a dW_local x`` with the authors' fixed ``a = 0.5``.
- Test time (every evaluation, received or personalized): the instance-wise dynamic weight
  ``a(x) = 0.5 * mean_i cos(h(x), h(x_i))``, where ``h`` is the last layer's hidden state at the
  prompt's last token computed with the local adapter alone (the authors' ``emb_type="last"``),
  ``x_i`` are local training prompts, and 0.5 is the authors' ``max_weight``. Each test instance
  is then scored with ``(1 - a(x))`` global and ``a(x)`` local.

Deviations:

- The local training prompts ``x_i``: a fixed sample of up to ``REFERENCE_SIZE`` (16) per client,
  drawn once from ``(run.seed, client)``; the authors draw 5 new random instructions per test
  instance. The mean cosine over a fixed sample is the dot product with the mean of their unit
  vectors, so it is computed once per evaluation and is deterministic.
- ``a(x)`` is clamped at 0 (a negative mean cosine would subtract the local adapter).
- The local adapter is trained from the first round; the authors' FedDPA-T starts it in the second
  round (their first round trains the global adapter alone).
- Evaluation runs one example at a time, because every example has its own mixture (the authors
  also decode one instance at a time); ``test/mix_weight`` reports the mean ``a(x)``.
- Averaging is unweighted unless ``federation.weighting = "examples"`` (the authors weight by data
  size); the paper's test sets with distribution shift (other clients' tasks) are not built: every
  method is evaluated on each client's own test split (docs/algorithm.md#evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms.base import ClientContext, client_seed
from fedamole.algorithms.lora_common import (
    DEFAULT_ADAPTER,
    PARTS,
    adapter_scales,
    lora_parameters,
)
from fedamole.algorithms.lora_strategy import LoRAStrategy, train_adapter
from fedamole.config import Config
from fedamole.data.collate import IGNORE_INDEX, collate, encode_prompt, encode_train
from fedamole.data.types import Example
from fedamole.evaluation import evaluate_examples, mean_loss
from fedamole.training import model_inputs

__all__ = [
    "LOCAL_ADAPTER",
    "MAX_WEIGHT",
    "REFERENCE_SIZE",
    "TRAIN_WEIGHT",
    "FedDPA",
    "instance_weights",
    "local_direction",
    "mix_weights",
    "mixture",
    "prompt_representations",
    "reference_prompts",
]

LOCAL_ADAPTER = "local"
TRAIN_WEIGHT = 0.5  # weight of the local adapter while training (the authors' local_weight)
MAX_WEIGHT = 0.5  # a(x) = MAX_WEIGHT * similarity (the authors' max_weight / "half")
REFERENCE_SIZE = 16  # local training prompts that represent the client's data


def mixture(local_weight: float) -> dict[str, float]:
    """Adapter scale factors for ``(1 - w) global + w local``, for ``adapter_scales``."""
    return {DEFAULT_ADAPTER: 1.0 - local_weight, LOCAL_ADAPTER: local_weight}


class FedDPA(LoRAStrategy):
    """Global adapter averaged, local adapter private, instance-wise mixture at test time."""

    name = "feddpa"
    adapters = (DEFAULT_ADAPTER, LOCAL_ADAPTER)
    shared_parts = PARTS
    trained_parts = PARTS

    def train(self, ctx: ClientContext, lr: float) -> dict[str, float]:
        steps = self.cfg.baselines.feddpa.local_steps or self.cfg.train.steps
        with adapter_scales(ctx.model, mixture(TRAIN_WEIGHT)):
            local = lora_parameters(ctx.model, LOCAL_ADAPTER)
            local_result = train_adapter(ctx, self.cfg, local, lr=lr, steps=steps)
            shared = lora_parameters(ctx.model, DEFAULT_ADAPTER, self.trained_parts)
            result = train_adapter(ctx, self.cfg, shared, lr=lr)
        return {
            "train/loss": result.loss,
            "train/tokens": result.tokens,
            "train/local_loss": local_result.loss,
            **result.step_metrics(),
            **local_result.step_metrics("train/local_step_"),
        }

    def evaluate(self, ctx: ClientContext) -> dict[str, float]:
        if not ctx.data.test:
            return {}
        weights = instance_weights(ctx, self.cfg, ctx.data.test)
        per_example = []
        for index, (example, w) in enumerate(zip(ctx.data.test, weights, strict=True)):
            records: list[dict[str, Any]] = []
            with adapter_scales(ctx.model, mixture(w)):
                per_example.append(
                    evaluate_examples(
                        ctx.model,
                        ctx.tokenizer,
                        [example],
                        self.cfg.eval,
                        max_length=self.cfg.model.max_length,
                        per_example=records,
                    )
                )
            if ctx.predictions is not None:  # the example's index in the test split
                ctx.predictions.extend({**r, "example": index} for r in records)
        out = _combine(per_example, _label_counts(ctx, self.cfg, ctx.data.test))
        out["mix_weight"] = float(np.mean(weights))
        return out

    def eval_loss(self, ctx: ClientContext) -> float:
        weights = instance_weights(ctx, self.cfg, ctx.data.eval)
        counts = _label_counts(ctx, self.cfg, ctx.data.eval)
        total = 0.0
        for example, w, n in zip(ctx.data.eval, weights, counts, strict=True):
            if n == 0:  # prompt too long: skipped, as in mean_loss
                continue
            with adapter_scales(ctx.model, mixture(w)):
                loss = mean_loss(
                    ctx.model,
                    ctx.tokenizer,
                    [example],
                    batch_size=1,
                    max_length=self.cfg.model.max_length,
                )
            total += loss * n
        if sum(counts) == 0:
            raise ValueError("no eval example has a prompt shorter than `model.max_length`")
        return total / sum(counts)


def instance_weights(ctx: ClientContext, cfg: Config, examples: Sequence[Example]) -> list[float]:
    """The local adapter's weight ``a(x)`` for each example (see the module docstring).

    Returns:
        One weight in ``[0, MAX_WEIGHT]`` per example.
    """
    if not ctx.data.train or not examples:  # no local data: the local adapter never trained
        return [0.0] * len(examples)
    kw = {"max_length": cfg.model.max_length, "batch_size": cfg.eval.batch_size}
    prompts = reference_prompts(ctx.data.train, seed=cfg.run.seed, client=ctx.client_id)
    direction = local_direction(ctx.model, ctx.tokenizer, prompts, **kw)
    return mix_weights(ctx.model, ctx.tokenizer, [ex.prompt for ex in examples], direction, **kw)


def reference_prompts(train: Sequence[Example], *, seed: int, client: int) -> list[str]:
    """Up to ``REFERENCE_SIZE`` training prompts of one client, a fixed draw per (seed, client)."""
    rng = np.random.default_rng(client_seed(seed, 0, client))
    picks = rng.choice(len(train), size=min(REFERENCE_SIZE, len(train)), replace=False)
    return [train[int(i)].prompt for i in sorted(picks)]


def local_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
) -> torch.Tensor:
    """Mean unit representation (d,) of the reference prompts under the local adapter alone; its
    dot product with a unit vector is the mean cosine to those prompts."""
    with adapter_scales(model, mixture(1.0)):
        ref = prompt_representations(
            model, tokenizer, prompts, max_length=max_length, batch_size=batch_size
        )  # (k, d)
    return F.normalize(ref, dim=-1).mean(0)  # (d,)


def mix_weights(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    direction: torch.Tensor,
    *,
    max_length: int,
    batch_size: int,
) -> list[float]:
    """``a(x) = MAX_WEIGHT * cos-similarity``, clamped to ``[0, MAX_WEIGHT]``, per prompt.

    Args:
        direction: (d,) from :func:`local_direction`.
    """
    with adapter_scales(model, mixture(1.0)):  # the local adapter alone
        emb = prompt_representations(
            model, tokenizer, prompts, max_length=max_length, batch_size=batch_size
        )  # (n, d)
    similarity = F.normalize(emb, dim=-1) @ direction  # (n,) mean cosine to the reference prompts
    return (MAX_WEIGHT * similarity).clamp(0.0, MAX_WEIGHT).tolist()


@torch.inference_mode()
def prompt_representations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
) -> torch.Tensor:
    """Last-layer hidden state at each prompt's last token, float32 on CPU, shape (n, d).

    Prompts longer than ``max_length`` tokens keep their last ``max_length`` tokens.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = [encode_prompt(p, tokenizer)[-max_length:] for p in chunk]
            batch = collate([{"input_ids": x} for x in ids], tokenizer.pad_token_id)
            inputs = model_inputs(batch, next(model.parameters()).device)
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]  # (b, T, d)
            out.append(hidden[:, -1].float().cpu())  # (b, d): the last token (left padding)
    finally:
        model.train(was_training)
    return torch.cat(out)


def _label_counts(ctx: ClientContext, cfg: Config, examples: Sequence[Example]) -> list[int]:
    """Supervised tokens per example in the training format (0 when its prompt is too long)."""
    counts = []
    for example in examples:
        enc = encode_train(example, ctx.tokenizer, cfg.model.max_length)
        counts.append(0 if enc is None else sum(t != IGNORE_INDEX for t in enc["labels"]))
    return counts


def _combine(per_example: Sequence[dict[str, float]], counts: Sequence[int]) -> dict[str, float]:
    """Per-example :func:`evaluate_examples` results as one evaluation of all of them."""
    out: dict[str, float] = {
        "num_examples": sum(m["num_examples"] for m in per_example),
        "num_skipped": sum(m["num_skipped"] for m in per_example),
    }
    for metric in ("accuracy", "rouge_l", "score"):
        values = [m[metric] for m in per_example if metric in m]
        if values:
            out[metric] = sum(values) / len(values)
    losses = [(m["loss"], n) for m, n in zip(per_example, counts, strict=True) if "loss" in m]
    if losses and sum(n for _, n in losses):
        out["loss"] = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    return out
