"""FedLEASE's one-off clustering of clients by their warm-up LoRA B matrices
(docs/algorithm.md#fedlease).

Pure math on small matrices (one row per client), written out here instead of calling a
clustering library so that every tie is broken the same way on every machine:

- :func:`b_distances`: ``D[i, j] = mean over modules m of 1 - cos(vec B_i^m, vec B_j^m)``, the
  cosine of the flattened B matrices (A is ignored: every client starts from the same A and B
  carries what it learned). A zero B has cosine 0 with everything (distance 1).
- :func:`average_linkage`: agglomerative clustering with average linkage (UPGMA): repeatedly merge
  the two clusters with the smallest mean pairwise distance, until ``k`` remain. Ties go to the
  pair whose smallest members come first.
- :func:`silhouette`: the mean silhouette ``s_i = (b_i - a_i) / max(a_i, b_i)`` over clients, with
  ``a_i`` the mean distance to the rest of its cluster (``s_i = 0`` for a singleton, as
  scikit-learn) and ``b_i`` the smallest mean distance to another cluster.
- :func:`choose_clusters`: the labels of the ``k`` in ``2..k_max`` with the best silhouette (the
  smallest ``k`` on a tie); one cluster when fewer than 3 clients are clustered.
- :func:`rand_index`: a diagnostic, the share of client pairs on which two labellings agree
  (together in both, or apart in both): 1 when the clusters are the partition's groups.

Labels are renumbered by first appearance (client 0's cluster is 0), so they are a function of
the distance matrix alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedamole.algorithms.lora_common import part_of

__all__ = ["average_linkage", "b_distances", "choose_clusters", "rand_index", "silhouette"]


def b_distances(states: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """The (n, n) float64 matrix of mean-over-modules cosine distances of the clients' B matrices.

    Args:
        states: n LoRA states with the same keys (``"lora_B:<module>"`` of shape (d_out, r); the
            ``lora_A`` entries are ignored).

    Raises:
        ValueError: no state, or no ``lora_B`` entry.
    """
    if not states:
        raise ValueError("no client LoRA to cluster")
    keys = sorted(k for k in states[0] if part_of(k) == "lora_B")
    if not keys:
        raise ValueError("the client LoRA states hold no lora_B entry to cluster by")
    n = len(states)
    total = torch.zeros(n, n, dtype=torch.float64)
    for key in keys:
        flat = torch.stack([s[key].reshape(-1).to(torch.float64) for s in states])  # (n, d_out*r)
        norms = flat.norm(dim=1, keepdim=True)  # (n, 1)
        unit = torch.where(norms > 0, flat / norms.clamp_min(1e-300), torch.zeros_like(flat))
        total += 1.0 - unit @ unit.T  # (n, n) cosine distances of this module
    dist = total / len(keys)
    dist.fill_diagonal_(0.0)
    return (dist + dist.T) / 2  # exactly symmetric


def average_linkage(dist: torch.Tensor, k: int) -> list[int]:
    """Cluster labels (0-based, by first appearance) of average-linkage agglomeration stopped at
    ``k`` clusters.

    Args:
        dist: (n, n) symmetric distances.
        k: the number of clusters, ``1 <= k <= n``.

    Raises:
        ValueError: ``k`` outside ``1..n``.
    """
    n = dist.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} clients into {k} clusters")
    clusters = [[i] for i in range(n)]
    while len(clusters) > k:
        best: tuple[float, int, int] | None = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                d = float(dist[clusters[a]][:, clusters[b]].mean())  # mean pairwise distance
                if best is None or d < best[0]:  # strict: ties keep the earliest pair
                    best = (d, a, b)
        _, a, b = best  # type: ignore[misc]
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return _relabel(clusters, n)


def silhouette(dist: torch.Tensor, labels: Sequence[int]) -> float:
    """The mean silhouette of a clustering with at least 2 clusters (see the module docstring).

    Raises:
        ValueError: fewer than 2 clusters or a label count other than n.
    """
    n = dist.shape[0]
    if len(labels) != n or len(set(labels)) < 2:
        raise ValueError("the silhouette needs one label per client and at least 2 clusters")
    groups = {c: [i for i in range(n) if labels[i] == c] for c in sorted(set(labels))}
    scores = []
    for i in range(n):
        own = [j for j in groups[labels[i]] if j != i]
        if not own:
            scores.append(0.0)  # a singleton's silhouette is 0
            continue
        a = float(dist[i, own].mean())
        b = min(float(dist[i, g].mean()) for c, g in groups.items() if c != labels[i])
        scores.append(0.0 if max(a, b) == 0 else (b - a) / max(a, b))
    return sum(scores) / n


def choose_clusters(dist: torch.Tensor, k_max: int) -> tuple[list[int], dict[int, float]]:
    """The average-linkage labels with the best silhouette over ``k = 2..min(k_max, n - 1)``.

    Returns:
        (labels, {k: silhouette}); one cluster and no scores when fewer than 2 values of ``k`` are
        possible to compare against one another, that is when ``min(k_max, n - 1) < 2``.
    """
    n = dist.shape[0]
    top = min(k_max, n - 1)
    if top < 2:
        return [0] * n, {}
    scores, best = {}, None
    for k in range(2, top + 1):
        labels = average_linkage(dist, k)
        scores[k] = silhouette(dist, labels)
        if best is None or scores[k] > scores[best[0]]:  # strict: the smallest k wins a tie
            best = (k, labels)
    assert best is not None
    return best[1], scores


def rand_index(labels: Sequence[int], truth: Sequence[int]) -> float:
    """The share of the ``n (n - 1) / 2`` client pairs that ``labels`` and ``truth`` both put
    together or both put apart (1.0 for fewer than 2 clients).

    Raises:
        ValueError: the two labellings differ in length.
    """
    n = len(labels)
    if len(truth) != n:
        raise ValueError(f"{n} labels against {len(truth)}")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if not pairs:
        return 1.0
    agree = sum((labels[i] == labels[j]) == (truth[i] == truth[j]) for i, j in pairs)
    return agree / len(pairs)


def _relabel(clusters: Sequence[Sequence[int]], n: int) -> list[int]:
    labels = [-1] * n
    order = sorted(clusters, key=min)  # by each cluster's first client
    for c, members in enumerate(order):
        for i in members:
            labels[i] = c
    return labels
