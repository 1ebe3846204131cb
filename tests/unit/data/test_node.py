"""One data owner's splits from its own local file (Flower deployment)."""

from __future__ import annotations

import json

import pytest

from fedamole.data import DataError, load_federated_data
from fedamole.data.node import load_node_data
from fedamole.data.splits import split_ratios, split_sizes

from ._util import FIXTURES, config


def _write(path, n, category="open_qa"):
    rows = [
        {"instruction": f"q{i}", "context": "", "response": f"a{i}", "category": category}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_node_file_is_split_by_the_config_rules(tmp_path):
    cfg = config(data={"eval_cap": 3, "test_cap": 4})
    data = load_node_data(cfg, _write(tmp_path / "mine.jsonl", 60), client=2)
    ratios = split_ratios(cfg.data.embedding_ratio, cfg.data.eval_ratio, cfg.data.test_ratio)
    sizes = split_sizes(60, ratios, (None, cfg.data.embedding_cap, 3, 4))
    assert tuple(map(len, (data.train, data.embedding, data.eval, data.test))) == sizes
    prompts = [
        ex.prompt for part in (data.train, data.embedding, data.eval, data.test) for ex in part
    ]
    assert len(set(prompts)) == len(prompts)  # no example in two splits


def test_node_split_is_reproducible_and_differs_per_client(tmp_path):
    cfg, path = config(), _write(tmp_path / "mine.jsonl", 40)
    a, b = load_node_data(cfg, path, client=0), load_node_data(cfg, path, client=0)
    c = load_node_data(cfg, path, client=1)
    assert a == b
    assert [e.prompt for e in a.train] != [e.prompt for e in c.train]


def test_node_file_with_choices_and_missing_context(tmp_path):
    data = load_node_data(config(data={"test_ratio": 0.2}), FIXTURES / "local_ok.jsonl", client=0)
    assert len(data.train) >= 1


def test_missing_or_bad_node_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_node_data(config(), tmp_path / "nope.jsonl", client=0)
    with pytest.raises(DataError, match="bad_json.jsonl"):
        load_node_data(config(), FIXTURES / "bad_json.jsonl", client=0)


def test_global_partition_is_untouched_by_node_loading(tmp_path):
    cfg = config(
        data={"num_examples": 100}, partition={"kind": "iid"}, federation={"num_clients": 2}
    )
    before = load_federated_data(cfg)
    load_node_data(cfg, _write(tmp_path / "mine.jsonl", 30), client=0)
    assert load_federated_data(cfg) == before
