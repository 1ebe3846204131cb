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


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_synthetic_scenarios_partition(path):
    cfg = load(path)
    data = load_federated_data(cfg)
    assert len(data.clients) == cfg.federation.num_clients
    assert all(len(c.train) > 0 for c in data.clients)
