"""Checks before a run (fedamole.preflight): what used to fail only after the model loaded, with
a run directory left behind, is reported by `fedamole validate` and before anything is created."""

from __future__ import annotations

import time

import pytest
import torch
from typer.testing import CliRunner

import fedamole
from fedamole.cli import app
from fedamole.config import ConfigError

runner = CliRunner()


@pytest.fixture(scope="module")
def smoke_toml(repo):
    return str(repo / "configs" / "smoke.toml")


def _validate(smoke_toml, *overrides):
    return runner.invoke(app, ["validate", smoke_toml, *overrides])


def _run(smoke_toml, run_dir, *overrides):
    return runner.invoke(app, ["run", smoke_toml, *overrides, "--run-dir", str(run_dir)])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.name=tiny:gpt", "`model.name` = 'tiny:gpt' is not a tiny model; choose one of"),
        ("model.name=embedded:nope", "`model.name` = 'embedded:nope' is not an embedded model"),
        (
            'mole.target_modules=["q_proj", "q_prj"]',
            "`mole.target_modules` entry 'q_prj' matches no module of 'tiny:llama'",
        ),
        ('mole.target_modules=["(q"]', "entry '(q' is not a valid regular expression"),
        ('mole.target_modules=["model\\\\.layers\\\\.9\\\\..*"]', "matches no module"),
        ('mole.target_modules=["layers"]', "not nn.Linear"),
    ],
)
def test_validate_reports_what_fails_after_the_model_loads(smoke_toml, override, expected):
    result = _validate(smoke_toml, override)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_baseline_targets_follow_peft_s_rule(smoke_toml):
    bad = _validate(smoke_toml, "federation.algorithm=fedit", 'baselines.target_modules=["zz"]')
    assert bad.exit_code == 2
    assert "`baselines.target_modules` entry 'zz' matches no module" in bad.output
    assert "q_proj" in bad.output  # the names it has
    ok = _validate(smoke_toml, "federation.algorithm=fedit", 'baselines.target_modules=["o_proj"]')
    assert ok.exit_code == 0, ok.output
    # the prompt methods wrap no layer: their targets are not looked at
    prompt = _validate(
        smoke_toml, "federation.algorithm=fedprompt", 'baselines.target_modules=["zz"]'
    )
    assert prompt.exit_code == 0, prompt.output


def test_unmatched_targets_rules():
    from fedamole.preflight import unmatched_targets

    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "lm_head"]
    assert unmatched_targets(names, ["q_proj", "lm_head"], rule="peft") == []
    assert unmatched_targets(names, ["self_attn.q_proj", "proj"], rule="peft") == ["proj"]
    assert unmatched_targets(names, [r"model\.layers\.1\..*", "proj"], rule="mole") == ["proj"]
    assert unmatched_targets(names, [r"model\.layers\.1\..*"], rule="peft") == [
        r"model\.layers\.1\..*"
    ]


def test_a_bad_target_stops_the_run_before_its_directory_exists(smoke_toml, tmp_path):
    run_dir = tmp_path / "r"
    result = _run(smoke_toml, run_dir, 'mole.target_modules=["q_prj"]')
    assert result.exit_code == 2, result.output
    assert "`mole.target_modules` entry 'q_prj'" in result.output
    assert not run_dir.exists()  # the corrected rerun is not blocked
    with pytest.raises(ConfigError, match="is not a tiny model"):
        fedamole.run(smoke_toml, run_dir=run_dir, model__name="tiny:gpt")
    assert not run_dir.exists()


def test_a_missing_data_path_stops_the_run_before_the_model_loads(smoke_toml, tmp_path):
    run_dir = tmp_path / "r"
    missing = str(tmp_path / "nope.jsonl")
    result = _run(smoke_toml, run_dir, "data.dataset=local", f"data.path={missing}")
    assert result.exit_code == 2, result.output
    assert "`data.path`" in result.output and "does not exist" in result.output
    assert not run_dir.exists()
    checked = _validate(smoke_toml, "data.dataset=local", f"data.path={missing}")
    assert checked.exit_code == 0  # the data may be on the machine that will run it
    assert "# note: `data.path`" in checked.output
    assert "`fedamole run` stops on this" in checked.output


def test_an_uncached_hub_id_fails_fast_offline(smoke_toml, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    run_dir = tmp_path / "r"
    start = time.monotonic()
    result = _run(smoke_toml, run_dir, "model.name=nosuch-org/nosuch-model")
    assert time.monotonic() - start < 20  # was about 52 s of retries
    assert result.exit_code == 2, result.output
    assert "`model.name` = 'nosuch-org/nosuch-model' is not in the local hub cache" in result.output
    assert "local folder" in result.output
    assert not run_dir.exists()
    # validate cannot look at it either, but the config is valid: a note, not an error
    checked = _validate(smoke_toml, "model.name=nosuch-org/nosuch-model")
    assert checked.exit_code == 0
    assert "note:" in checked.output and "`fedamole run` stops on this" in checked.output


def test_a_model_folder_without_config_json(smoke_toml, tmp_path):
    result = _validate(smoke_toml, f"model.name={tmp_path}")
    assert result.exit_code == 2
    assert "the folder has no config.json" in result.output


def test_a_model_folder_is_read_from_its_config(smoke_toml, tmp_path):
    from fedamole.models import tiny_config

    tiny_config("qwen2").save_pretrained(tmp_path)
    assert _validate(smoke_toml, f"model.name={tmp_path}").exit_code == 0
    bad = _validate(smoke_toml, f"model.name={tmp_path}", 'mole.target_modules=["c_attn"]')
    assert bad.exit_code == 2 and "'c_attn' matches no module" in bad.output


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="this torch build has CUDA")
def test_cuda_on_a_cpu_build_is_a_validate_error(smoke_toml, tmp_path):
    for device in ("cuda", "cuda:1"):
        result = _validate(smoke_toml, f"model.device={device}")
        assert result.exit_code == 2
        assert f"`model.device` = '{device}': this torch build" in result.output
        assert "has no CUDA" in result.output and "TORCH_SPEC" in result.output
    run_dir = tmp_path / "r"
    assert _run(smoke_toml, run_dir, "model.device=cuda").exit_code == 2
    assert not run_dir.exists()


@pytest.mark.skipif(torch.backends.mps.is_built(), reason="this torch build has MPS")
def test_mps_on_a_build_without_it_is_a_validate_error(smoke_toml):
    result = _validate(smoke_toml, "model.device=mps")
    assert result.exit_code == 2
    assert "`model.device` = 'mps': this torch build" in result.output
    assert "has no MPS" in result.output and "TORCH_SPEC" in result.output


def test_a_model_that_cannot_be_built_without_weights_is_not_refused(monkeypatch, smoke):
    """Target modules are checked on a weightless model; a config that transformers cannot
    build so (an exotic architecture) leaves them to the real load instead of stopping the run."""
    import fedamole.model_config
    from fedamole import preflight as module

    def exotic(name):
        raise RuntimeError("needs a kernel this machine lacks")

    monkeypatch.setattr(fedamole.model_config, "meta_model", exotic)
    module._modules.cache_clear()
    try:
        found = module.preflight(smoke.replace(**{"model.name": "tiny:qwen2"}))
    finally:
        module._modules.cache_clear()
    assert found.problems() == [] and found.parameters is None


def test_the_hub_probe_is_bounded_and_honours_offline(monkeypatch):
    from fedamole import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def hanging(*args, **kwargs):  # a name lookup that never answers
        time.sleep(30)

    monkeypatch.setattr(models.socket, "create_connection", hanging)
    start = time.monotonic()
    assert models._probe_hub.__wrapped__("https://hub.invalid", 0.5) is False
    assert time.monotonic() - start < 5
