"""Server aggregation of client uploads (docs/algorithm.md#aggregation).

* Each domain expert is averaged **only among the clients that uploaded it** (its holders);
  the shared expert and the token projection are averaged over all (accepted) clients.
* Unweighted by default, as the reference; optional per-client weights (e.g. example counts) are
  normalized among the clients that enter each mean.
* Means are computed in float64 and cast back to the inputs' dtype, so bf16 uploads lose nothing
  to summation order.

:func:`check_update` lists what is wrong with a received tensor map (missing or unexpected keys,
shapes, dtypes, NaN/Inf), so the server can reject one client with a logged reason instead of
poisoning the average.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import torch

__all__ = [
    "TensorSpec",
    "aggregate_experts",
    "aggregate_shared",
    "average_tensors",
    "check_update",
    "spec_of",
]

ClientId = TypeVar("ClientId", bound=Hashable)


def average_tensors(
    tensors: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Mean of equally shaped floating tensors, computed in float64.

    Args:
        tensors: one or more tensors with identical shape and dtype.
        weights: optional non-negative weights, one per tensor (normalized here).

    Returns:
        The (weighted) mean, same shape, dtype and device as ``tensors[0]``.

    Raises:
        ValueError: on an empty list, mismatched shapes or dtypes, integer tensors, bad weights.
    """
    if not tensors:
        raise ValueError("average_tensors needs at least one tensor")
    first = tensors[0]
    bad = [i for i, t in enumerate(tensors) if t.shape != first.shape or t.dtype != first.dtype]
    if bad:
        t = tensors[bad[0]]
        raise ValueError(
            f"tensor {bad[0]} is {tuple(t.shape)} {t.dtype}, tensor 0 is "
            f"{tuple(first.shape)} {first.dtype}: cannot average"
        )
    if not first.is_floating_point():
        raise ValueError(f"average_tensors needs floating tensors, got {first.dtype}")
    stacked = torch.stack([t.to(first.device, torch.float64) for t in tensors])  # (n, *shape)
    w = _normalized(weights, len(tensors)).to(first.device)  # (n,)
    mean = torch.tensordot(w, stacked, dims=1)  # (*shape)
    return mean.to(first.dtype)


def _normalized(weights: Sequence[float] | None, n: int) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"weights must be {n} finite non-negative numbers with a positive sum; got {weights}"
        )
    return w / w.sum()


def aggregate_experts(
    uploads: Mapping[ClientId, Mapping[int, tuple[torch.Tensor, ...]]],
    weights: Mapping[ClientId, float] | None = None,
) -> dict[int, tuple[torch.Tensor, ...]]:
    """Average each expert id among the clients that uploaded it (its holders).

    Args:
        uploads: client -> {expert id -> tensors of that expert, e.g. ``(A, B)``}.
        weights: optional client -> weight; each expert's mean renormalizes over its holders.

    Returns:
        expert id -> averaged tensors, ids ascending; holders are taken in sorted client order,
        so the result does not depend on the mapping's order.
    """
    holders: dict[int, list[ClientId]] = {}
    for client in sorted(uploads):
        for expert in uploads[client]:
            holders.setdefault(int(expert), []).append(client)
    out = {}
    for expert in sorted(holders):
        clients = holders[expert]
        parts = [uploads[c][expert] for c in clients]
        if len({len(p) for p in parts}) != 1:
            raise ValueError(f"expert {expert}: clients {clients} sent different tensor counts")
        w = None if weights is None else [weights[c] for c in clients]
        out[expert] = tuple(average_tensors(list(ts), w) for ts in zip(*parts, strict=True))
    return out


def aggregate_shared(
    uploads: Mapping[ClientId, tuple[torch.Tensor, ...]],
    weights: Mapping[ClientId, float] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Average parameters every client holds (token projection, shared expert) over all clients.

    Args:
        uploads: client -> tensors, e.g. ``(token_proj,)`` or ``(shared_A, shared_B)``.
        weights: optional client -> weight.

    Returns:
        The averaged tensors, in upload order.
    """
    clients = sorted(uploads)
    if not clients:
        raise ValueError("aggregate_shared needs at least one client upload")
    parts = [uploads[c] for c in clients]
    if len({len(p) for p in parts}) != 1:
        raise ValueError(f"clients {clients} sent different tensor counts")
    w = None if weights is None else [weights[c] for c in clients]
    return tuple(average_tensors(list(ts), w) for ts in zip(*parts, strict=True))


class TensorSpec(NamedTuple):
    """Expected shape and (optionally) dtype of one received tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None


def spec_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The specs of a reference tensor map (e.g. what the server sent), for :func:`check_update`."""
    return {k: TensorSpec(tuple(t.shape), t.dtype) for k, t in tensors.items()}


def check_update(
    received: Mapping[str, Any],
    expected: Mapping[str, TensorSpec],
    *,
    allow_extra: bool = False,
) -> list[str]:
    """Problems with a client's upload; an empty list means it may be aggregated.

    Args:
        received: key -> value as received (values should be tensors).
        expected: key -> :class:`TensorSpec` (see :func:`spec_of`).
        allow_extra: accept keys that ``expected`` does not name.

    Returns:
        Human-readable problems, in key order: missing or unexpected keys, non-tensors, wrong
        shapes or dtypes, and NaN/Inf counts in floating tensors.
    """
    problems = [f"{k}: missing" for k in sorted(set(expected) - set(received))]
    if not allow_extra:
        problems += [f"{k}: unexpected" for k in sorted(set(received) - set(expected))]
    for key in sorted(set(expected) & set(received)):
        value, spec = received[key], expected[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key}: expected a tensor, got {type(value).__name__}")
            continue
        if tuple(value.shape) != tuple(spec.shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(spec.shape)}")
        if spec.dtype is not None and value.dtype != spec.dtype:
            problems.append(f"{key}: dtype {value.dtype}, expected {spec.dtype}")
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                problems.append(f"{key}: {bad} NaN/Inf of {value.numel()} values")
    return problems
