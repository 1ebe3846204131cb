"""One data owner's splits from its own local file (Flower deployment, docs/data.md#deployment).

In a real deployment there is no global dataset to partition: each SuperNode reads the file its
owner points ``--node-config data-file=...`` at. The file has the ``local`` dataset's format (JSON
lines, or a JSON list, of records with Dolly's fields ``instruction``, ``context``, ``response``,
``category``, and optional ``choices``; see :mod:`fedamole.data.datasets`). It is split into train,
embedding, eval and test exactly as a client's share is in :func:`fedamole.data.load_federated_data`
(same ratios, caps and cut rule), shuffled with a generator seeded by ``(partition seed, client)``,
so the split is reproducible and every owner's differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedamole.config import Config
from fedamole.data import partition_seed
from fedamole.data.datasets import load_examples
from fedamole.data.splits import resolve_test_cap, split_client, split_ratios
from fedamole.data.types import ClientData

__all__ = ["load_node_data"]


def load_node_data(cfg: Config, path: str | Path, *, client: int) -> ClientData:
    """Load one owner's local file and split it with the config's split rules.

    Args:
        cfg: the run's config (``data`` ratios and caps, ``partition.seed`` or ``run.seed``).
        path: the owner's .jsonl/.json file (or a folder of them); a relative one is in the
            data root, as ``data.path`` is (docs/data.md#where-datapath-resolves).
        client: the owner's client index; seeds its shuffle together with the partition seed.

    Returns:
        The owner's train, embedding, eval and test splits.

    Raises:
        DataError: the file is missing or malformed, or its train split would be empty.
    """
    data = cfg.data.model_copy(update={"dataset": "local", "path": str(path)})
    examples = load_examples(data)
    rng = np.random.default_rng([partition_seed(cfg), client])
    ratios = split_ratios(data.embedding_ratio, data.eval_ratio, data.test_ratio)
    caps = (None, data.embedding_cap, data.eval_cap, resolve_test_cap(data, examples))
    return split_client(examples, np.arange(len(examples)), ratios, caps, rng)
