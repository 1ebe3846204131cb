"""The scenario TOMLs load, and the synthetic ones partition."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedamole.config import load
from fedamole.data import load_federated_data

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
PAPER = sorted(p for p in (CONFIGS / "paper").glob("*.toml") if p.name != "base.toml")
SYNTHETIC = sorted((CONFIGS / "scenarios").glob("synthetic_*.toml"))


def test_all_seven_paper_scenarios_exist():
    names = {p.stem for p in PAPER}
    assert {f"{d}_dir{a}" for d in ("snli", "dolly") for a in ("0.1", "1.0", "100")} <= names
    assert "ni_task" in names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_scenarios_validate(path):
    cfg = load(path)
    assert cfg.run.name == path.stem and cfg.data.path is not None
    assert cfg.model.name == load(CONFIGS / "paper" / "base.toml").model.name


# docs/data.md#getting-the-papers-datasets: the layout under the data root ($FEDAMOLE_DATA).
DATA_LAYOUT = {
    "snli": "snli",
    "dolly": "dolly/databricks-dolly-15k.jsonl",
    "natural_instructions": "natural-instructions",
}


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_scenarios_name_their_data_in_the_documented_layout(path):
    data = load(path).data
    assert data.path == DATA_LAYOUT[data.dataset]  # relative: in the data root


def test_no_shipped_config_points_outside_the_data_root():
    """Shipped configs (also installed as fedamole/configs) name data by the documented layout,
    never by a development workspace's folder beside the checkout."""
    outside = ".." + "/shared"
    configs = sorted(CONFIGS.rglob("*.toml"))
    assert len(configs) > 20
    assert [p.relative_to(CONFIGS) for p in configs if outside in p.read_text()] == []


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_synthetic_scenarios_partition(path):
    cfg = load(path)
    data = load_federated_data(cfg)
    assert len(data.clients) == cfg.federation.num_clients
    assert all(len(c.train) > 0 for c in data.clients)
