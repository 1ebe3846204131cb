"""Routing math of the HMoLE layer: gate logits, top-k selection, load-balance loss.

Pure functions over stacked tensors (tokens flattened to ``T``), called by
:mod:`fedamole.mole.layer`.

- :func:`expert_embedding_logits` is the HMoLE router (docs/algorithm.md#routing): no gate matrix,
  the logit of expert ``e`` is ``<A_e x, W_tok x> / sqrt(r)``, so the gate travels with the expert's
  own LoRA-A.
- The linear router of the "FedAMoLE-H" ablation (docs/algorithm.md#ablations-of-the-layer; absent
  from the reference code, so the definition is ours): each expert carries its own learned gate
  vector ``g_e`` (a row of the layer's ``gate`` parameter, shape ``(n, d_in)``) and the logit is
  ``g_e . x`` on the un-dropped input (computed inside :func:`fedamole.mole.layer.mole_forward`'s
  fused input projection). Like the HMoLE router it needs no resizing when a client holds a
  different subset of experts: the gate row is stored, aggregated and dispatched with the expert.
  ``token_proj`` stays in the layer (RSEA statistics use it) but gets no gradient from this router.
- :func:`route` is softmax over the **held** experts only, top-k, renormalization, computed as a
  softmax over the top-k logits (the same numbers, fewer operations). It runs in float32 or wider
  whatever the adapter dtype (the reference runs it in bf16).
- :func:`load_balance_loss` is the Switch-style term ``n <P_mean, f>``
  (docs/algorithm.md#load-balance-loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

__all__ = [
    "Routing",
    "expert_embedding_logits",
    "load_balance_loss",
    "route",
]


@dataclass(frozen=True)
class Routing:
    """Routing decision of one layer call over ``T`` flattened tokens and ``n`` held experts.

    Attributes:
        logits: ``(T, n)`` gate logits, float32 or wider (differentiable).
        indices: ``(T, k)`` long, the top-k experts of each token (local positions ``0..n-1``).
        weights: ``(T, k)``, the selected probabilities renormalized to sum to 1 per token.
    """

    logits: Tensor
    indices: Tensor
    weights: Tensor

    @cached_property
    def probs(self) -> Tensor:
        """``(T, n)`` softmax over the held experts, computed on first use.

        The forward itself only needs the top-k; the balance loss needs the full distribution.
        """
        return self.logits.softmax(dim=-1)  # (T, n)

    def dense_weights(self) -> Tensor:
        """The renormalized weights scattered back to ``(T, n)``, zero for unselected experts."""
        return torch.zeros_like(self.logits).scatter(1, self.indices, self.weights)  # (T, n)


def expert_embedding_logits(expert_emb: Tensor, token_emb: Tensor) -> Tensor:
    """HMoLE gate logits ``z[t, e] = <h[t, e], q[t]> / sqrt(r)``.

    Args:
        expert_emb: ``(T, n, r)`` expert embeddings ``h[t, e] = A_e x_t`` of the un-dropped input.
        token_emb: ``(T, r)`` token embeddings ``q[t] = W_tok x_t``.

    Returns:
        ``(T, n)`` logits.
    """
    rank = token_emb.shape[-1]
    logits = torch.bmm(expert_emb, token_emb.unsqueeze(-1)).squeeze(-1)  # (T, n, r) @ (T, r, 1)
    return logits / math.sqrt(rank)  # (T, n)


def route(logits: Tensor, top_k: int) -> Routing:
    """Softmax over the held experts, top-k, renormalize.

    Args:
        logits: ``(T, n)`` gate logits over the ``n`` experts this layer holds.
        top_k: number of routed experts per token, ``1 <= top_k <= n``.

    Returns:
        The :class:`Routing` (logits, probabilities and weights in float32 or wider).

    Raises:
        ValueError: ``top_k`` is larger than the number of held experts.
    """
    n = logits.shape[-1]
    if not 1 <= top_k <= n:
        raise ValueError(
            f"`top_k` ({top_k}) must be between 1 and the number of held experts ({n})"
        )
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (T, n), >= fp32
    top, indices = logits.topk(top_k, dim=-1)  # (T, k), (T, k)
    # softmax over the selected logits == selected softmax probabilities renormalized
    weights = top.softmax(dim=-1)  # (T, k)
    return Routing(logits=logits, indices=indices, weights=weights)


def load_balance_loss(probs: Tensor, indices: Tensor, token_mask: Tensor | None = None) -> Tensor:
    """Switch-Transformer balance term of one layer call: ``n * <P_mean, f>``.

    ``P_mean`` is the mean routing distribution over tokens and ``f_e`` the fraction of the
    ``T * k`` top-k slots that went to expert ``e`` (a count: no gradient flows through ``f``). The
    reference averages over every token, padding included (it trains with batch size 1, so there is
    none); ``token_mask`` lets padded batches exclude padding.

    Args:
        probs: ``(T, n)`` routing probabilities.
        indices: ``(T, k)`` selected experts.
        token_mask: optional ``(T,)`` (or any shape with ``T`` elements) mask, nonzero = real token.

    Returns:
        A scalar tensor, equal to 1 for perfectly balanced routing.

    Raises:
        ValueError: the mask does not have one entry per token, or selects no token.
    """
    num_tokens, n = probs.shape
    k = indices.shape[-1]
    if token_mask is None:
        mask = probs.new_ones(num_tokens)  # (T,)
    else:
        if token_mask.numel() != num_tokens:
            raise ValueError(
                f"`token_mask` has {token_mask.numel()} entries but the layer routed {num_tokens} "
                "tokens; pass the attention mask of exactly the batch being forwarded"
            )
        mask = token_mask.reshape(num_tokens).to(probs.device, probs.dtype)  # (T,)
    count = mask.sum()
    if count <= 0:
        raise ValueError("`token_mask` selects no token; the balance loss is undefined")
    p_mean = (probs * mask[:, None]).sum(dim=0) / count  # (n,)
    slots = torch.zeros_like(probs).scatter_add(1, indices, probs.new_ones(indices.shape))  # (T, n)
    frac = (slots * mask[:, None]).sum(dim=0) / (count * k)  # (n,)
    return n * torch.dot(p_mean, frac.detach())
