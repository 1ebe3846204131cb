"""Partitioners: sizes, skew statistics, seeds, task order, infeasible inputs
(docs/data.md#partitions)."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from fedamole.config import PartitionConfig
from fedamole.data import DataError
from fedamole.data.partition import (
    PARTITIONERS,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_task,
)

LABELS = np.repeat(np.arange(10), 200)  # 10 balanced classes, 2000 examples


def _mean_max_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the share of the client's largest class (1/C uniform, 1 one class)."""
    counts = np.stack([np.bincount(labels[p], minlength=labels.max() + 1) for p in parts])
    return float((counts.max(axis=1) / counts.sum(axis=1)).mean())


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


def test_registry_matches_config_literal():
    kinds = typing.get_args(PartitionConfig.model_fields["kind"].annotation)
    assert set(PARTITIONERS) == set(kinds)


def test_iid_equal_sizes_and_cover():
    parts = partition_iid(103, 10, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    _assert_disjoint_cover(parts, 103)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 1.0, 100.0])
def test_dirichlet_min_size_and_cover(alpha):
    for seed in range(5):
        parts = partition_dirichlet(LABELS, 10, alpha, np.random.default_rng(seed), min_size=10)
        assert min(len(p) for p in parts) >= 10
        _assert_disjoint_cover(parts, len(LABELS))


def test_dirichlet_alpha_controls_skew():
    def shares(alpha):
        return [
            _mean_max_share(
                LABELS, partition_dirichlet(LABELS, 10, alpha, np.random.default_rng(s))
            )
            for s in range(5)
        ]

    skewed, medium, uniform = shares(0.1), shares(1.0), shares(100.0)
    assert min(skewed) > 0.45  # measured 0.52-0.79 over 20 seeds
    assert 0.2 < np.mean(medium) < 0.45  # measured 0.30
    assert max(uniform) < 0.15  # measured 0.112-0.119; a uniform split would be 0.1


def test_dirichlet_balancing_rule_caps_quantity_skew():
    # Without the rule, alpha = 0.1 often gives one client most of a class; with it, a client
    # stops receiving once it holds |D|/N, so no client exceeds |D|/N plus one class.
    for seed in range(5):
        parts = partition_dirichlet(LABELS, 10, 0.1, np.random.default_rng(seed))
        assert max(len(p) for p in parts) <= 200 + 200


def test_same_seed_same_partition_other_seed_other():
    def run(seed):
        return partition_dirichlet(LABELS, 10, 1.0, np.random.default_rng(seed))

    assert all(np.array_equal(a, b) for a, b in zip(run(7), run(7), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(run(7), run(8), strict=True))


def test_task_gives_client_i_classes_ik_to_ik_plus_k():
    labels = np.array([3, 0, 1, 2, 3, 5, 4, 0, 1])
    parts = partition_task(labels, num_clients=2, tasks_per_client=2)
    assert [sorted(set(labels[p].tolist())) for p in parts] == [[0, 1], [2, 3]]
    assert parts[0].tolist() == [1, 2, 7, 8]  # every example of classes 0 and 1


def test_task_needs_enough_categories():
    with pytest.raises(DataError, match=r"\(3\*2=6\) categories but the data has 5"):
        partition_task(np.arange(5), num_clients=3, tasks_per_client=2)


def test_alpha_must_be_positive():
    with pytest.raises(DataError, match=r"`partition.alpha` \(0.0\) must be > 0"):
        partition_dirichlet(LABELS, 10, 0.0, np.random.default_rng(0))


def test_more_clients_than_examples():
    cfg = PartitionConfig(kind="iid", min_size=1)
    with pytest.raises(DataError, match=r"more clients .* = 5\) than examples \(3\)"):
        partition(np.zeros(3, dtype=int), cfg, 5, np.random.default_rng(0))


def test_not_enough_examples_for_min_size():
    with pytest.raises(DataError, match="min_size` \\(10\\) examples each"):
        partition_dirichlet(np.zeros(50, dtype=int), 10, 1.0, np.random.default_rng(0))


def test_unreachable_min_size_raises_instead_of_looping():
    labels = np.repeat(np.arange(2), 60)  # 120 examples, min_size 10 over 10 clients: barely
    with pytest.raises(DataError, match=r"in 3 draws .* raise `partition.alpha`"):
        partition_dirichlet(labels, 10, 0.001, np.random.default_rng(0), max_tries=3)


def test_partition_checks_min_size_for_every_kind():
    labels = np.array([0] * 50 + [1] * 3)
    with pytest.raises(DataError, match=r"task partition gave client 1 3 examples"):
        partition(labels, PartitionConfig(kind="task"), 2, np.random.default_rng(0))


def test_task_shared_by_clients_splits_each_group_disjointly():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3])
    parts = partition_task(
        labels, num_clients=4, tasks_per_client=1, clients_per_task=2, rng=np.random.default_rng(0)
    )
    assert [sorted(set(labels[p].tolist())) for p in parts] == [[0], [0], [1], [1]]
    for a, b in (parts[0:2], parts[2:4]):
        assert not set(a) & set(b) and len(a) == len(b) == 2  # disjoint halves
        assert sorted([*a, *b]) == np.flatnonzero(labels == labels[a[0]]).tolist()
    with pytest.raises(DataError, match="clients_per_task` \\(3\\) must divide"):
        partition_task(labels, num_clients=4, clients_per_task=3, rng=np.random.default_rng(0))
    with pytest.raises(DataError, match=r"\(10/2\*1=5\) categories but the data has 4"):
        partition_task(labels, num_clients=10, clients_per_task=2, rng=np.random.default_rng(0))


def test_paired_scenario_gives_four_related_pairs(repo):
    from fedamole.config import load
    from fedamole.data import load_federated_data

    cfg = load(repo / "configs" / "scenarios" / "synthetic_paired.toml", ["data.num_examples=400"])
    data = load_federated_data(cfg)
    cats = data.client_categories()
    assert len(cats) == 8 and all(len(c) == 1 for c in cats)
    assert [cats[i] == cats[i + 1] for i in range(0, 8, 2)] == [True] * 4
    assert len(set(cats)) == 4
