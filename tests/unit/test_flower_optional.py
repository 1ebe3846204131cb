"""The Flower engine is optional: the core never imports flwr, and its absence is a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedamole.engines import ENGINES, run_experiment
from fedamole.engines.flower import FlowerUnavailableError, require_flower


def test_core_package_does_not_import_flwr():
    code = (
        "import sys, fedamole.cli, fedamole.engines, fedamole.engines.embedded, "
        "fedamole.engines.common, fedamole.engines.flower, fedamole.algorithms.fedamole\n"
        "assert 'flwr' not in sys.modules, sorted(m for m in sys.modules if 'flwr' in m)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_missing_flwr_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a)
    )
    with pytest.raises(FlowerUnavailableError, match="make install-flower"):
        require_flower()
    assert "flower" in ENGINES
    from fedamole.config import Config

    with pytest.raises(ValueError, match=r"fedamole\[flower\]"):
        run_experiment(Config(), tmp_path / "r", engine="flower")
    assert not (tmp_path / "r").exists()
