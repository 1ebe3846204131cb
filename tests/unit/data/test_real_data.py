"""The offline copies of the paper's datasets (../shared/data; skipped where absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fedamole.config import DataConfig, load
from fedamole.data import load_examples, load_federated_data, resolve_data_path
from fedamole.data.paths import DATA_ROOT_ENV
from fedamole.experiments.grid import expand, load_grid, resolve_config

from ._util import config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

pytestmark = pytest.mark.data

DOLLY_COUNTS = {
    "open_qa": 3742, "general_qa": 2191, "classification": 2136, "closed_qa": 1773,
    "brainstorming": 1766, "information_extraction": 1506, "summarization": 1188,
    "creative_writing": 709,
}  # fmt: skip


def test_dolly_all_records_eight_categories(shared_data):
    examples = load_examples(DataConfig(dataset="dolly", path=str(shared_data / "dolly")))
    assert len(examples) == 15_011
    assert Counter(ex.category for ex in examples) == DOLLY_COUNTS
    assert all(ex.prompt.endswith("### Response:\n") for ex in examples)


def test_snli_dev_and_test(shared_data):
    examples = load_examples(DataConfig(dataset="snli", path=str(shared_data / "snli")))
    assert len(examples) == 9_842 + 9_824
    assert set(Counter(ex.category for ex in examples)) == {
        "entailment",
        "neutral",
        "contradiction",
    }


def test_ni_all_24_drafts_and_task_partition_in_lexicographic_order(shared_data):
    path = str(shared_data / "natural-instructions")
    cfg = config(
        {"dataset": "natural_instructions", "path": path},
        {"kind": "task", "tasks_per_client": 1},
        federation={"num_clients": 10},
    )
    data = load_federated_data(cfg)  # num_tasks = 100 keeps all 24 draft tasks
    task_ids = data.categories
    assert len(task_ids) == 24 and list(task_ids) == sorted(task_ids)
    assert task_ids[:10] == tuple(
        f"task{n}" for n in (126, 127, 128, 129, 130, 131, 137, 138, 139, 140)
    )
    for i, client in enumerate(data.clients):
        held = client.train + client.embedding + client.eval + client.test
        assert {ex.category for ex in held} == {task_ids[i]}
    # The generation cap (50) binds for the 6,500-instance tasks, not the 390-instance ones.
    assert [len(c.test) for c in data.clients] == [50] * 6 + [39] * 4


def test_the_shipped_configs_find_their_data_in_the_data_root(shared_data, monkeypatch, tmp_path):
    """The offline copies have the documented layout, so FEDAMOLE_DATA=<that folder> is all the
    paper configs and the CPU benchmark sweep need, from any working directory."""
    monkeypatch.setenv(DATA_ROOT_ENV, str(shared_data))
    monkeypatch.chdir(tmp_path)
    paths = {load(p).data.path for p in (CONFIGS / "paper").glob("*_*.toml")}
    grid = load_grid(CONFIGS / "sweeps" / "cpu_quality.toml", out_dir=tmp_path / "runs")
    paths |= {resolve_config(run).data.path for run in expand(grid)} - {None}
    assert paths == {"snli", "dolly/databricks-dolly-15k.jsonl", "natural-instructions"}
    for path in paths:
        assert resolve_data_path(path).exists(), path
    snli = load(CONFIGS / "paper" / "snli_dir0.1.toml").data
    assert len(load_examples(snli)) == 9_842 + 9_824
