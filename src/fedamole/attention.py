"""Attention for local training on the CPU
(docs/results/performance.md#what-changed-each-measured-on-its-own).

For the short rows of a training batch (~60 tokens) PyTorch's CPU flash-attention kernel is slow
backward: ``fedamole bench step configs/demo.toml`` measured it at 14 % of a FedAMoLE step, for
~1 % of the step's FLOPs. :func:`math_attention` computes the same attention as plain products,
in float32 (scores, softmax and the weighted sum; the result is cast back to the query's dtype),
which autograd differentiates with a few small GEMMs. Its scores are stored for the backward
(``B H T S`` floats a layer), so it is used only while they stay small
(:data:`MAX_SCORES`); longer rows, and every device but the CPU, keep ``sdpa``.

It is registered with transformers' ``AttentionInterface`` under :data:`TRAINING_ATTENTION`
(with sdpa's boolean mask) and switched on for the duration of local training by
:func:`training_attention`; evaluation keeps the model's own implementation. Same numbers, in
another order: results agree with ``sdpa`` to rounding (in float32 to ~1e-6; with a bf16 backbone
this path is at least as precise, as nothing is rounded to bf16 before the weighted sum).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

__all__ = ["MAX_SCORES", "TRAINING_ATTENTION", "math_attention", "training_attention"]

TRAINING_ATTENTION = "fedamole_cpu_math"
MAX_SCORES = 1 << 22  # scores per layer (B * H * T * S) up to which the math path is used: 16 MB


def math_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention as float32 products (an ``AttentionInterface`` function).

    Args:
        module: the attention module (``num_key_value_groups``, ``training``, ``is_causal``).
        query: ``(B, H, T, d)``.
        key: ``(B, H_kv, S, d)``; ``value`` the same.
        attention_mask: ``(B, 1, T, S)`` boolean, True where a query may attend (sdpa's mask), or
            ``None`` for a plain causal mask (the last ``T`` of ``S`` positions query).
        scaling: the score scale (default ``d ** -0.5``).
        dropout: dropout on the attention weights while training.

    Returns:
        ``(out, None)`` with ``out`` of shape ``(B, T, H, d)`` in the query's dtype.
    """
    batch, heads, q_len, dim = query.shape
    k_len = key.shape[2]
    if query.device.type != "cpu" or batch * heads * q_len * k_len > MAX_SCORES:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    groups = heads // key.shape[1]
    q = query.float()  # (B, H, T, d)
    k = key.float().repeat_interleave(groups, dim=1)  # (B, H, S, d)
    v = value.float().repeat_interleave(groups, dim=1)  # (B, H, S, d)
    scale = dim**-0.5 if scaling is None else scaling
    scores = torch.matmul(q, k.transpose(2, 3)) * scale  # (B, H, T, d) @ (B, H, d, S)
    if attention_mask is None:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        allowed = allowed.tril(k_len - q_len)  # (T, S) causal
    else:
        allowed = attention_mask.bool()  # (B, 1, T, S)
    # sdpa's semantics: masked keys at -inf (so scores that overflow still give NaN, and a
    # diverged model is caught), and a query with no key at all (a left-padding position) gets
    # zero weights: its row is made finite before the softmax, so no NaN reaches the backward.
    empty = ~allowed.any(dim=-1, keepdim=True)  # (B, 1, T, 1) or (T, 1)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0)  # (B, H, T, S)
    probs = scores.softmax(dim=-1).masked_fill(empty, 0.0)  # (B, H, T, S)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, v)  # (B, H, T, S) @ (B, H, S, d) -> (B, H, T, d)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None  # (B, T, H, d)


AttentionInterface.register(TRAINING_ATTENTION, math_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(TRAINING_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def training_attention(model: nn.Module) -> Iterator[bool]:
    """Use :func:`math_attention` inside the block when the model runs ``sdpa`` on the CPU;
    yields whether it switched. The model's implementation is restored on exit."""
    config = getattr(model, "config", None)
    setter = getattr(model, "set_attn_implementation", None)
    current = getattr(config, "_attn_implementation", None)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if setter is None or current != "sdpa" or not on_cpu:
        yield False
        return
    setter(TRAINING_ATTENTION)
    try:
        yield True
    finally:
        setter(current)
