"""Groups of related clients, and what an expert assignment does with them
(docs/algorithm.md#rsea).

* :func:`client_groups`: clients grouped by related data (their partition categories overlap).
* :func:`oracle_scores`: scores that deal experts to such groups (the ``"oracle"`` policy of
  :class:`~fedamole.federated.assignment.AssignmentPolicy`).
* :func:`assignment_diagnostics`: the RSEA diagnostics FedAMoLE logs every round: affinity
  spread, retention of the previous assignment, group purity and its chance level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["HeldExperts", "assignment_diagnostics", "client_groups", "oracle_scores"]


class HeldExperts(Protocol):
    """Who holds which expert: ``modules`` maps a module name to its ``(E, N)`` bool matrix
    (an :class:`~fedamole.federated.assignment.Assignment`, which imports this module)."""

    modules: Mapping[str, np.ndarray]


def client_groups(categories: Sequence[Iterable[Any]]) -> list[list[int]]:
    """Clients grouped by related data: connected components of "their category sets overlap"."""
    sets = [set(c) for c in categories]
    groups: list[list[int]] = []
    seen: set[int] = set()
    for start in range(len(sets)):
        if start in seen:
            continue
        group, todo = [], [start]
        seen.add(start)
        while todo:
            i = todo.pop()
            group.append(i)
            for j in range(len(sets)):
                if j not in seen and sets[i] & sets[j]:
                    seen.add(j)
                    todo.append(j)
        groups.append(sorted(group))
    return groups


def assignment_diagnostics(
    current: HeldExperts,
    *,
    previous: HeldExperts | None = None,
    affinities: Mapping[str, np.ndarray] | None = None,
    categories: Sequence[Iterable[Any]] | None = None,
) -> dict[str, float]:
    """What an assignment did, for the run's log (each key only when its inputs are given).

    - ``affinity_spread``: mean over modules and experts of the (max - min) affinity probability
      over clients: near 0 when every client looks alike to every expert (RSEA has nothing to
      choose by).
    - ``retention``: the share of ``previous``'s expert-holder pairs that ``current`` keeps
      (1 for a static assignment; about ``k / N`` for a random re-draw).
    - ``group_purity``: among client pairs that co-hold an expert, weighted by how many experts
      they co-hold (over every module), the share whose category sets overlap (``categories[i]``:
      client ``i``'s categories in the partition).
    - ``group_purity_chance``: its expectation under a uniformly random feasible assignment: the
      share of all client pairs whose sets overlap. Exact: the bounds treat every client alike,
      so every pair is equally likely to co-hold a given expert, and every expert has the same
      number of holder pairs.
    """
    out: dict[str, float] = {}
    if affinities:
        spreads = [a.max(axis=1) - a.min(axis=1) for a in affinities.values()]  # (E,) each
        out["affinity_spread"] = float(np.mean(np.concatenate(spreads)))
    if previous is not None:
        kept = sum(int((previous.modules[m] & held).sum()) for m, held in current.modules.items())
        total = sum(int(held.sum()) for held in previous.modules.values())
        out["retention"] = kept / total if total else 1.0
    if categories is not None:
        sets = [set(c) for c in categories]
        related = np.array([[bool(a & b) for b in sets] for a in sets])  # (N, N)
        pairs = related_pairs = 0
        for held in current.modules.values():  # (E, N)
            co = held.astype(np.int64).T @ held.astype(np.int64)  # (N, N) experts co-held
            upper = np.triu(co, k=1)
            pairs += int(upper.sum())
            related_pairs += int((upper * related).sum())
        n = len(sets)
        all_pairs = n * (n - 1) // 2
        if pairs:
            out["group_purity"] = related_pairs / pairs
        if all_pairs:
            out["group_purity_chance"] = int(np.triu(related, k=1).sum()) / all_pairs
    return out


def oracle_scores(
    num_experts: int, num_clients: int, groups: Iterable[Iterable[int]]
) -> np.ndarray:
    """``(E, N)`` scores that deal experts round-robin to ``groups`` of related clients: 1 for
    the clients of expert ``e``'s group, 0 elsewhere. Solved with the usual bounds
    (:meth:`AssignmentPolicy.solve`), they give the feasible assignment that keeps the most
    expert-holder pairs inside groups, experts spread evenly over the groups.

    Raises:
        ValueError: no group, or a client outside ``0..N-1``.
    """
    members = [sorted(set(group)) for group in groups]
    members = [group for group in members if group]
    if not members:
        raise ValueError("the oracle needs at least one group of clients")
    scores = np.zeros((num_experts, num_clients))
    for e in range(num_experts):
        group = members[e % len(members)]
        if group[0] < 0 or group[-1] >= num_clients:
            raise ValueError(f"group {group} names a client outside 0..{num_clients - 1}")
        scores[e, group] = 1.0
    return scores
