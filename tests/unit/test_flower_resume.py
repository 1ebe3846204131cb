"""The Flower ServerApp resumes a run only with the config it was started with, as ``fedamole run
--resume`` does (``fedamole.rundir.config_mismatch``): it refuses another one, naming the fields
and the fix, instead of adopting the saved config."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="the Flower engine needs `make install-flower`")

from fedamole.config import load
from fedamole.engines.flower.server_app import ServerSettings
from fedamole.rundir import RunDir

pytestmark = pytest.mark.flower


@pytest.fixture
def started(repo, tmp_path):
    """A run directory started with ``configs/smoke.toml`` and ``train.lr=0.002``."""
    smoke = repo / "configs" / "smoke.toml"
    run = RunDir.prepare(load(smoke, ["train.lr=0.002"]), tmp_path / "run")
    run.release()
    return smoke, run


def _settings(smoke, run, overrides: str) -> ServerSettings:
    return ServerSettings.from_run_config(
        {"config": str(smoke), "overrides": overrides, "run-dir": str(run.path), "resume": True}
    )


def test_resume_with_another_config_is_refused_naming_the_fields_and_the_fix(started):
    smoke, run = started
    with pytest.raises(ValueError, match="differs in train.lr, train.steps") as err:
        _settings(smoke, run, "train.lr=0.003 train.steps=5")
    assert f'config="{run.config.resolve()}"' in str(err.value)
    assert "resume=true" in str(err.value)


def test_resume_with_the_same_config_goes_on(started):
    smoke, run = started
    settings = _settings(smoke, run, "train.lr=0.002")
    assert settings.resume and settings.cfg == load(run.config)
    # tracking fields change no result: a resume may add them
    hooks = _settings(smoke, run, "train.lr=0.002 run.tensorboard='tb'")
    assert hooks.cfg.run.tensorboard == "tb"


def test_resume_with_the_runs_own_config_goes_on(started):
    _, run = started
    assert _settings(run.config, run, "").cfg == load(run.config)
