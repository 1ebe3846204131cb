"""Partitioners: spread example indices over clients (docs/data.md#partitions).

All are pure functions of integer class labels (category codes in sorted category order) and, where
random, an explicit :class:`numpy.random.Generator`. Each returns one index array per client.

- ``iid``: a shuffled equal split (sizes differ by at most one). Not used by the paper scripts.
- ``dirichlet``: NIID-Bench label skew, as in the reference. Repeat until every client has at least
  ``min_size`` examples: for each class (ascending), shuffle its indices, draw client proportions
  q ~ Dir(alpha * 1_N), zero q for every client that already holds >= |D|/N examples (the balancing
  rule: it caps how far quantity skew can go), renormalize, and cut the class by the cumulative
  proportions. Finally shuffle each client's indices. Unlike the reference, the retry loop is
  bounded (``max_tries``) and raises instead of spinning forever, and it fails at once when
  ``num_clients * min_size`` exceeds the data.
- ``task``: k tasks per client; client i gets every example of classes i*k ... (i+1)*k-1 in sorted
  category order (the reference's label-encoder order), independent of the seed. Classes beyond
  ``num_clients * k`` are left out, as in the reference. With ``clients_per_task = c > 1``, c
  consecutive clients share one group of k classes, each holding a disjoint random share of its
  examples (clients 0 and 1 split classes 0..k-1, ...): pairs of related clients, the scenario in
  which sharing experts should pay (``configs/scenarios/synthetic_paired.toml``).

Every partition must give each client at least ``min_size`` examples, or a :class:`DataError` says
which client, how many, and what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedamole.config import PartitionConfig
from fedamole.data.types import DataError

__all__ = [
    "PARTITIONERS",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_task",
]


def partition_iid(
    num_examples: int, num_clients: int, rng: np.random.Generator, *, min_size: int = 1
) -> list[np.ndarray]:
    """Shuffle ``range(num_examples)`` and cut it into ``num_clients`` near-equal parts.

    Raises:
        DataError: fewer than ``num_clients * min_size`` examples.
    """
    _check_enough(num_examples, num_clients, min_size)
    return list(np.array_split(rng.permutation(num_examples), num_clients))


def partition_dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Dirichlet label skew with the reference's balancing rule (module docstring).

    Args:
        labels: (n,) integer class of each example.
        num_clients: N.
        alpha: the Dirichlet concentration; small is skewed, large is near-uniform.
        rng: the only source of randomness.
        min_size: every client ends with at least this many examples.
        max_tries: how many full redraws to attempt before giving up.

    Returns:
        N index arrays, disjoint, covering every example, each shuffled.

    Raises:
        DataError: ``alpha`` <= 0, too few examples, or ``min_size`` not reached in ``max_tries``.
    """
    labels = np.asarray(labels)
    if alpha <= 0:
        raise DataError(f"`partition.alpha` ({alpha}) must be > 0; the paper uses 0.1, 1.0 and 100")
    _check_enough(len(labels), num_clients, min_size)
    smallest = 0
    for _ in range(max_tries):
        parts = _dirichlet_draw(labels, num_clients, alpha, rng)
        smallest = min(len(p) for p in parts)
        if smallest >= min_size:
            return [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"Dirichlet partition (alpha={alpha}) gave some client fewer than `partition.min_size` "
        f"({min_size}) examples in {max_tries} draws (last smallest: {smallest}); raise "
        "`partition.alpha`, lower `partition.min_size` or `federation.num_clients`, or add data"
    )


def _dirichlet_draw(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    """One pass over the classes: shuffle, draw, cap, cut (the module docstring)."""
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    fair_share = len(labels) / num_clients
    for k in np.unique(labels):
        idx_k = rng.permutation(np.flatnonzero(labels == k))
        q = rng.dirichlet(np.full(num_clients, alpha))  # (N,)
        open_ = np.array([len(p) < fair_share for p in parts])  # (N,) the balancing rule
        q = q * open_
        # Tiny alpha can underflow every open client's share to 0: spread the class over them.
        q = q / q.sum() if q.sum() > 0 else open_ / open_.sum()
        cuts = (np.cumsum(q) * len(idx_k)).astype(int)[:-1]  # (N-1,)
        for part, piece in zip(parts, np.split(idx_k, cuts), strict=True):
            part.extend(piece.tolist())
    return parts


def partition_task(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    tasks_per_client: int = 1,
    *,
    clients_per_task: int = 1,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Task skew: client i gets every example of classes ``i*k ... (i+1)*k - 1`` (sorted order).

    With ``clients_per_task = c``, clients ``j*c ... (j+1)*c - 1`` share the classes
    ``j*k ... (j+1)*k - 1``: their examples, shuffled by ``rng``, are cut into c near-equal
    disjoint parts.

    Args:
        labels: (n,) integer class of each example; classes are taken in ascending order.
        num_clients: N.
        tasks_per_client: k.
        clients_per_task: c, a divisor of N.
        rng: the shuffle of a shared group's examples (needed when c > 1).

    Returns:
        N index arrays in ascending index order (the caller's split step shuffles them).

    Raises:
        DataError: c does not divide N, or fewer than ``N / c * k`` classes.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if num_clients % clients_per_task:
        raise DataError(
            f"`partition.clients_per_task` ({clients_per_task}) must divide "
            f"`federation.num_clients` ({num_clients}): each group of categories goes to that "
            "many clients"
        )
    groups = num_clients // clients_per_task
    need = groups * tasks_per_client
    if len(classes) < need:
        share, count = "", f"{num_clients}"
        if clients_per_task > 1:
            share, count = " / `partition.clients_per_task`", f"{num_clients}/{clients_per_task}"
        raise DataError(
            f"task partition needs `federation.num_clients`{share} * `partition.tasks_per_client` "
            f"({count}*{tasks_per_client}={need}) categories but the data has {len(classes)}; "
            "lower either, or use a dataset with more categories"
        )
    out = []
    for j in range(groups):
        mine = classes[j * tasks_per_client : (j + 1) * tasks_per_client]
        members = np.flatnonzero(np.isin(labels, mine))
        if clients_per_task == 1:
            out.append(members)
            continue
        if rng is None:
            raise ValueError("partition_task with clients_per_task > 1 needs an rng")
        for part in np.array_split(rng.permutation(members), clients_per_task):
            out.append(np.sort(part))
    return out


def _check_enough(num_examples: int, num_clients: int, min_size: int) -> None:
    if num_examples < num_clients * min_size:
        raise DataError(
            f"{num_examples} examples cannot give `federation.num_clients` ({num_clients}) clients "
            f"`partition.min_size` ({min_size}) examples each; lower either or add data"
        )


def _check_min_size(parts: list[np.ndarray], min_size: int, kind: str) -> None:
    for i, part in enumerate(parts):
        if len(part) < min_size:
            raise DataError(
                f"{kind} partition gave client {i} {len(part)} examples, fewer than "
                f"`partition.min_size` ({min_size}); lower it or change the partition"
            )


_Partitioner = Callable[[np.ndarray, int, PartitionConfig, np.random.Generator], list[np.ndarray]]

PARTITIONERS: dict[str, _Partitioner] = {
    "dirichlet": lambda labels, n, cfg, rng: partition_dirichlet(
        labels, n, cfg.alpha, rng, min_size=cfg.min_size
    ),
    "iid": lambda labels, n, cfg, rng: partition_iid(len(labels), n, rng, min_size=cfg.min_size),
    "task": lambda labels, n, cfg, rng: partition_task(
        labels, n, cfg.tasks_per_client, clients_per_task=cfg.clients_per_task, rng=rng
    ),
}
"""``partition.kind`` -> partitioner; the keys match :class:`PartitionConfig`'s ``kind`` literal."""


def partition(
    labels: Sequence[int] | np.ndarray,
    cfg: PartitionConfig,
    num_clients: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Partition by ``cfg.kind`` and check that every client has ``cfg.min_size`` examples.

    Args:
        labels: (n,) integer class of each example.
        cfg: the partition section of the config.
        num_clients: N (``federation.num_clients``).
        rng: the only source of randomness.

    Raises:
        DataError: an infeasible partition (see the partitioners).
    """
    if num_clients < 1:
        raise DataError(f"`federation.num_clients` ({num_clients}) must be >= 1")
    if len(labels) < num_clients:
        raise DataError(
            f"more clients (`federation.num_clients` = {num_clients}) than examples "
            f"({len(labels)}); lower `federation.num_clients` or add data"
        )
    if cfg.kind not in PARTITIONERS:
        raise DataError(
            f"`partition.kind` ({cfg.kind!r}) is unknown; choose from {sorted(PARTITIONERS)}"
        )
    parts = PARTITIONERS[cfg.kind](np.asarray(labels), num_clients, cfg, rng)
    _check_min_size(parts, cfg.min_size, cfg.kind)
    return parts
