"""No silent paper-scale runs: ``fedamole.run(None)`` is refused, and a run that will take hours
on the CPU says so, with the numbers and how to shrink it, before it starts; ``env.json``
records the threads the run really uses."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import fedamole
from fedamole.config import load
from fedamole.preflight import run_size_warning

SMOLLM2_PARAMETERS = 134_515_008


def test_run_refuses_none(tmp_path, monkeypatch):
    import fedamole.api

    started = []  # without the check, None is the defaults: a paper-scale run (not run here)
    monkeypatch.setattr(fedamole.api, "start_run", lambda *a, **kw: started.append(1))
    with pytest.raises(TypeError) as info:
        fedamole.run(None, run_dir=tmp_path / "r")  # type: ignore[arg-type]
    assert not started
    text = str(info.value)
    assert "configs/demo.toml" in text and "fedamole.load_config()" in text
    assert not (tmp_path / "r").exists()


def test_the_defaults_warn_with_the_numbers_and_the_fix():
    text = run_size_warning(load(None, ["model.device=cpu"]), SMOLLM2_PARAMETERS)
    assert text is not None
    assert "10 clients x 30 rounds x 200 steps = 60,000 optimizer steps" in text
    assert "135M-parameter model" in text and "roughly 2.9 h" in text
    assert "federation.rounds=2 train.steps=10" in text and "configs/demo.toml" in text


def test_small_runs_and_gpu_runs_do_not_warn(repo):
    demo = load(repo / "configs" / "demo.toml", ["model.device=cpu"])
    assert run_size_warning(demo, SMOLLM2_PARAMETERS) is None
    paper = load(None, ["model.device=cuda"])
    assert run_size_warning(paper, SMOLLM2_PARAMETERS) is None
    assert run_size_warning(load(None, ["model.device=cpu"]), None) is None


def test_a_long_run_logs_the_warning_before_it_starts(repo, tmp_path, monkeypatch, caplog):
    import fedamole.engines.embedded as embedded
    from fedamole.engines import run_experiment

    started = []
    monkeypatch.setattr(embedded, "run_embedded", lambda cfg, run_dir, **kw: started.append(1))
    cfg = load(repo / "configs" / "smoke.toml", ["train.steps=100000000", "model.device=cpu"])
    with caplog.at_level(logging.WARNING, logger="fedamole"):
        run_experiment(cfg, tmp_path / "r")
    assert started == [1]
    assert any("optimizer steps" in r.getMessage() for r in caplog.records)


def test_env_json_records_the_threads_the_run_uses(repo, tmp_path):
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    try:
        fedamole.run(
            repo / "configs" / "smoke.toml",
            run_dir=tmp_path / "r",
            train__steps=1,
            federation__rounds=1,
            eval__test_init=False,
            run__threads=wanted,
        )
    finally:
        torch.set_num_threads(before)
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    assert env["torch_threads"] == wanted


def test_a_failure_while_loading_leaves_no_blocking_run_directory(repo, tmp_path, monkeypatch):
    """What the checks before a run cannot see (here: weights that do not load) fails after the
    run directory was created: the directory of a run that never began is taken away again, so
    that the same command runs once the cause is fixed."""
    import fedamole.engines.embedded as embedded

    def broken(cfg):
        raise OSError("model.safetensors: truncated file")

    monkeypatch.setattr(embedded, "build_runtime", broken)
    run_dir = tmp_path / "r"
    with pytest.raises(OSError, match="truncated"):
        fedamole.run(repo / "configs" / "smoke.toml", run_dir=run_dir, train__steps=1)
    assert not run_dir.exists()
    # a directory the user made (empty) stays, and nothing outside the run is touched
    run_dir.mkdir()
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OSError):
        fedamole.run(repo / "configs" / "smoke.toml", run_dir=run_dir, train__steps=1)
    assert run_dir.is_dir() and not any(run_dir.iterdir())
    assert (tmp_path / "keep.txt").exists()
    monkeypatch.undo()
    fedamole.run(
        repo / "configs" / "smoke.toml", run_dir=run_dir, train__steps=1, federation__rounds=1
    )
    assert (run_dir / "done.json").exists()
