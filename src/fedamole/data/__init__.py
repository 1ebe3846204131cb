"""Data: load a dataset, partition it over clients, split each client (docs/data.md).

:func:`load_federated_data` is the one entry point for runs: load (``datasets.py``) -> partition
(``partition.py``) -> per-client splits (``splits.py``), seeded by ``partition.seed`` or, when that
is unset, ``run.seed`` (so, as in the reference, different run seeds give different partitions).
The partition and the splits draw from two independent streams spawned from that seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedamole.config import Config
from fedamole.data.datasets import DATASETS, load_examples
from fedamole.data.partition import partition
from fedamole.data.paths import resolve_data_path
from fedamole.data.splits import resolve_test_cap, split_client, split_ratios
from fedamole.data.types import (
    ClientData,
    DataError,
    DataFileNotFoundError,
    Example,
    FederatedData,
)

__all__ = [
    "DATASETS",
    "ClientData",
    "DataError",
    "DataFileNotFoundError",
    "Example",
    "FederatedData",
    "encode_categories",
    "load_examples",
    "load_federated_data",
    "partition_seed",
    "resolve_data_path",
]


def partition_seed(cfg: Config) -> int:
    """The seed of the partition and splits: ``partition.seed``, else ``run.seed``."""
    return cfg.partition.seed if cfg.partition.seed is not None else cfg.run.seed


def encode_categories(examples: Sequence[Example]) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted category names and each example's index into them (the reference's label encoder).

    Returns:
        ``(categories, labels)`` with ``labels`` of shape (n,), int64.
    """
    categories = tuple(sorted({ex.category for ex in examples}))
    code = {name: i for i, name in enumerate(categories)}
    return categories, np.array([code[ex.category] for ex in examples], dtype=np.int64)


def load_federated_data(cfg: Config) -> FederatedData:
    """Load ``cfg.data``, partition it over ``cfg.federation.num_clients`` clients, split each.

    Args:
        cfg: the validated config (sections ``data``, ``partition``, ``federation``, ``run``).

    Returns:
        One :class:`ClientData` per client; ``categories`` sorted; ``meta`` records the seed, the
        example count, the split ratios and caps, how many examples no client received
        (``unassigned``), and each client's per-category counts before the caps
        (``partition_counts``, N lists of C ints).

    Raises:
        DataError: any loading, partition or split problem (see :func:`load_examples` and
            :func:`fedamole.data.partition.partition`).
    """
    data = cfg.data
    examples = load_examples(data)
    categories, labels = encode_categories(examples)
    seed = partition_seed(cfg)
    part_rng, split_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    parts = partition(labels, cfg.partition, cfg.federation.num_clients, part_rng)
    ratios = split_ratios(data.embedding_ratio, data.eval_ratio, data.test_ratio)
    test_cap = resolve_test_cap(data, examples)
    caps = (None, data.embedding_cap, data.eval_cap, test_cap)
    clients = tuple(split_client(examples, idx, ratios, caps, split_rng) for idx in parts)
    meta = {
        "seed": seed,
        "num_examples": len(examples),
        "unassigned": len(examples) - sum(len(p) for p in parts),
        "partition_counts": [
            np.bincount(labels[p], minlength=len(categories)).tolist() for p in parts
        ],
        "partition": cfg.partition.kind,
        "split_ratios": [round(float(r), 6) for r in ratios],
        "caps": {"embedding": data.embedding_cap, "eval": data.eval_cap, "test": test_cap},
    }
    return FederatedData(clients=clients, categories=categories, dataset=data.dataset, meta=meta)
