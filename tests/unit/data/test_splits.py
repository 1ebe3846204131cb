"""Per-client splits (docs/data.md#client-splits) and the load -> partition -> split pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from fedamole.config import DataConfig
from fedamole.data import DataError, load_federated_data
from fedamole.data.splits import (
    resolve_test_cap,
    split_client,
    split_ratios,
    split_sizes,
)
from fedamole.data.synthetic import generate_synthetic
from fedamole.data.types import Example

from ._util import config


def test_ratios_match_spec_for_dolly_and_snli():
    np.testing.assert_allclose(split_ratios(0.05, 0.1, 0.1), [0.76, 0.04, 0.1, 0.1])
    snli = 10_000 / 570_152
    np.testing.assert_allclose(
        split_ratios(0.05, snli, snli), [0.9167, 0.0482, 0.0175, 0.0175], atol=5e-4
    )
    assert split_ratios(0.0, 0.1, 0.1)[1] == 0  # baselines: no embedding set


def test_sizes_follow_ratios_then_caps():
    ratios = split_ratios(0.05, 0.1, 0.1)
    assert split_sizes(1000, ratios, (None, 200, 200, 50)) == (760, 40, 100, 50)
    assert split_sizes(100, ratios, (None, 200, 200, 200)) == (76, 4, 10, 10)
    assert split_sizes(10_000, ratios, (None, 200, 200, 200)) == (7600, 200, 200, 200)


def test_split_client_is_disjoint_and_uses_the_clients_examples():
    examples = generate_synthetic(500, seed=0)
    indices = np.arange(100, 300)
    client = split_client(
        examples, indices, split_ratios(0.05, 0.1, 0.1), (None, 5, 200, 8), np.random.default_rng(0)
    )
    assert (len(client.train), len(client.embedding), len(client.eval), len(client.test)) == (
        152,
        5,
        20,
        8,
    )
    held = client.train + client.embedding + client.eval + client.test
    positions = {id(ex): i for i, ex in enumerate(examples)}
    idx = [positions[id(ex)] for ex in held]
    assert len(set(idx)) == len(idx) and set(idx) <= set(indices.tolist())


def test_empty_train_split_is_rejected():
    examples = generate_synthetic(5, seed=0)
    with pytest.raises(DataError, match="empty train split"):
        split_client(
            examples,
            np.arange(1),
            split_ratios(0.05, 0.1, 0.1),
            (None,) * 4,
            np.random.default_rng(0),
        )


def test_auto_test_cap():
    choice = [Example("p", "a", "c", choices=("a", "b"))]
    free = [Example("p", "a", "c")]
    assert resolve_test_cap(DataConfig(), choice) == 200
    assert resolve_test_cap(DataConfig(), choice + free) == 50
    assert resolve_test_cap(DataConfig(test_cap=7), choice) == 7


def _split_signature(data):
    return [[ex.prompt for ex in c.train + c.test] for c in data.clients]


def test_pipeline_is_seeded_by_partition_seed_else_run_seed():
    def load(**seeds):
        part = {"kind": "dirichlet", "alpha": 1.0}
        if "partition" in seeds:
            part["seed"] = seeds["partition"]
        cfg = config(
            {"num_examples": 400}, part, run={"seed": seeds["run"]}, federation={"num_clients": 4}
        )
        return load_federated_data(cfg)

    base = load(run=1)
    assert _split_signature(load(run=1)) == _split_signature(base)
    assert _split_signature(load(run=2)) != _split_signature(base)
    assert _split_signature(load(run=2, partition=1)) == _split_signature(base)
    assert base.meta["seed"] == 1


def test_pipeline_task_partition_sizes_caps_and_meta():
    cfg = config(
        {"num_examples": 500, "test_cap": 3},
        {"kind": "task", "tasks_per_client": 2},
        federation={"num_clients": 4},
    )
    data = load_federated_data(cfg)
    assert len(data.clients) == 4 and len(data.categories) == 10
    for i, client in enumerate(data.clients):
        held = client.train + client.embedding + client.eval + client.test
        assert {ex.category for ex in held} == set(data.categories[2 * i : 2 * i + 2])
        assert (len(client.train), len(client.embedding), len(client.eval), len(client.test)) == (
            76,
            4,
            10,
            3,
        )
    assert data.meta["unassigned"] == 100  # the two families past 4 clients * 2
    assert [sum(c) for c in data.meta["partition_counts"]] == [100] * 4


@pytest.mark.parametrize("n", [7, 10, 33, 100, 997])
def test_a_zero_test_ratio_gives_no_test_example(n):
    ratios = split_ratios(0.05, 0.1, 0.0)
    assert split_sizes(n, ratios, (None, None, None, None))[3] == 0
    client = split_client(
        [Example(f"p{i}", "r", "c") for i in range(n)],
        np.arange(n),
        ratios,
        (None, None, None, None),
        np.random.default_rng(0),
    )
    assert client.test == () or len(client.test) == 0
    assert sum(map(len, (client.train, client.embedding, client.eval))) == n
