"""Summaries of evaluation results: statistics across clients, the reported round.

Pure functions over plain numbers: :func:`summarize_clients` (mean, weighted mean, worst client and
spread of every metric) and :func:`summarize_rounds` (the best or the last round of a run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

__all__ = ["summarize_clients", "summarize_rounds"]

# Metrics where a smaller value is better: their worst client is the maximum.
_LOWER_IS_BETTER = frozenset({"loss"})
# Counts reported by evaluate_examples: not averaged by summarize_clients.
_COUNTS = frozenset({"num_examples", "num_skipped"})


def summarize_clients(
    per_client: Mapping[int, Mapping[str, float]], weights: Mapping[int, int] | None = None
) -> dict[str, dict[str, float]]:
    """Across-client statistics of every metric.

    Args:
        per_client: client id -> metrics (e.g. :func:`evaluate_examples` output). A metric is
            summarized over the clients that report it; the counts ``num_examples``/``num_skipped``
            are not metrics and are left out.
        weights: client id -> weight of the weighted mean; defaults to each client's
            ``num_examples``.

    Returns:
        metric -> ``mean`` (unweighted, the paper's number), ``weighted_mean``, ``worst`` (the
        minimum, or the maximum for ``loss``) and ``std`` (population std, ddof=0, of the
        per-client values).

    Raises:
        ValueError: if a weight is missing or no client of a metric has a positive weight.
    """
    metrics = sorted({k for metrics in per_client.values() for k in metrics} - _COUNTS)
    out = {}
    for metric in metrics:
        values = {c: float(m[metric]) for c, m in per_client.items() if metric in m}
        w = {c: float(_weight(c, per_client[c], weights)) for c in values}
        if sum(w.values()) <= 0:
            raise ValueError(f"the clients reporting {metric!r} have zero total weight: {w}")
        mean = sum(values.values()) / len(values)
        worst = max if metric in _LOWER_IS_BETTER else min
        out[metric] = {
            "mean": mean,
            "weighted_mean": sum(w[c] * v for c, v in values.items()) / sum(w.values()),
            "worst": worst(values.values()),
            "std": math.sqrt(sum((v - mean) ** 2 for v in values.values()) / len(values)),
        }
    return out


def _weight(client: int, metrics: Mapping[str, float], weights: Mapping[int, int] | None) -> float:
    if weights is not None:
        if client not in weights:
            raise ValueError(f"`weights` has no entry for client {client}; give every client one")
        return weights[client]
    if "num_examples" not in metrics:
        raise ValueError(
            f"client {client} reports no `num_examples`; pass `weights` to summarize_clients"
        )
    return metrics["num_examples"]


def summarize_rounds(
    values_by_round: Mapping[int, float], mode: Literal["best", "last"]
) -> tuple[int, float]:
    """The reported round and value of one run (the paper reports the best round).

    Args:
        values_by_round: round -> metric value (higher is better).
        mode: ``"best"``: the maximum over rounds (the earliest round on ties); ``"last"``: the
            value of the last round.

    Returns:
        ``(round, value)``.

    Raises:
        ValueError: on an empty mapping or an unknown mode.
    """
    if not values_by_round:
        raise ValueError("`values_by_round` is empty: evaluate at least one round")
    if mode == "last":
        last = max(values_by_round)
        return last, values_by_round[last]
    if mode == "best":
        best = max(sorted(values_by_round), key=values_by_round.__getitem__)
        return best, values_by_round[best]
    raise ValueError(f"`mode` ({mode!r}) must be 'best' or 'last'")
