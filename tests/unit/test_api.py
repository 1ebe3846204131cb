"""The Python API (``fedamole.run``, ``load_config``, ``load_runs``, ``report``): the command
line's steps as functions, imported lazily."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from typer.testing import CliRunner

import fedamole
from fedamole.cli import app
from fedamole.config import Config, ConfigError
from fedamole.engines.summary import RunResult
from fedamole.rundir import RunDirError


@pytest.fixture(scope="module")
def smoke_toml(repo):
    return repo / "configs" / "smoke.toml"


@pytest.fixture(scope="module")
def finished(smoke_toml, tmp_path_factory):
    """One smoke run through ``fedamole.run``: one round of one step, in the default run
    directory (``run.out_dir/run.name``, both overridden)."""
    out = tmp_path_factory.mktemp("api-runs")
    result = fedamole.run(
        smoke_toml,
        train__steps=1,
        federation__rounds=1,
        run__out_dir=str(out),
        run__name="api",
    )
    return result, out / "api"


def test_import_fedamole_imports_neither_torch_nor_the_api(repo):
    code = "import fedamole, sys; print('torch' in sys.modules, 'fedamole.api' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def test_public_names_resolve_and_show_an_example():
    assert sorted(fedamole.__all__) == ["ConfigError", "load_config", "load_runs", "report", "run"]
    assert set(fedamole.__all__) <= set(dir(fedamole))
    assert fedamole.ConfigError is ConfigError
    for name in ("load_config", "load_runs", "report", "run"):
        assert "Example::" in getattr(fedamole, name).__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = fedamole.nope


def test_run_returns_the_result_and_writes_the_run_directory(finished):
    result, run_dir = finished
    assert isinstance(result, RunResult)
    assert result.run_dir == run_dir and result.rounds == 1
    assert sorted(result.last) == [0, 1, 2]
    assert all("score" in metrics for metrics in result.last.values())
    for name in ("config.toml", "metrics.jsonl", "comm.jsonl", "done.json"):
        assert (run_dir / name).is_file(), name


def test_overrides_reach_the_run_directory(finished):
    _, run_dir = finished
    written = tomllib.loads((run_dir / "config.toml").read_text())
    assert written["train"]["steps"] == 1 and written["federation"]["rounds"] == 1
    assert written["run"]["name"] == "api"


def test_a_bad_override_raises_config_error_naming_the_field(smoke_toml, tmp_path):
    with pytest.raises(ConfigError, match=r"`train\.steps` = 0") as info:
        fedamole.run(smoke_toml, run_dir=tmp_path / "r", train__steps=0, train__lr="fast")
    assert len(info.value.errors) == 2 and "train.lr" in str(info.value)  # every error at once
    with pytest.raises(ConfigError, match=r"`train\.stepz` is not a known field"):
        fedamole.run(smoke_toml, run_dir=tmp_path / "r", train__stepz=1)
    with pytest.raises(ConfigError, match=r"`train\.steps` = None"):
        fedamole.run(smoke_toml, run_dir=tmp_path / "r", train__steps=None)
    with pytest.raises(TypeError, match="section__field=value"):
        fedamole.run(smoke_toml, run_dir=tmp_path / "r", rundir=tmp_path)
    assert not (tmp_path / "r").exists()  # nothing started


def test_load_config_applies_overrides_to_a_path_or_a_config(smoke_toml):
    cfg = fedamole.load_config(smoke_toml, train__lr=2e-4, data__dataset="synthetic")
    assert isinstance(cfg, Config) and cfg.train.lr == 2e-4 and cfg.train.steps == 3
    again = fedamole.load_config(cfg, train__steps=5)
    assert again.train.steps == 5 and again.train.lr == 2e-4
    assert fedamole.load_config().to_dict() == Config().to_dict()  # the defaults alone
    with pytest.raises(ConfigError, match=r"`mole\.top_k`"):
        fedamole.load_config(cfg, mole__top_k=0)


def test_run_errors_before_starting(finished, smoke_toml, tmp_path):
    _, run_dir = finished
    with pytest.raises(ValueError, match="choose one"):
        fedamole.run(smoke_toml, run_dir=tmp_path / "x", resume=True, overwrite=True)
    with pytest.raises(ValueError, match="unknown engine 'ray'"):
        fedamole.run(smoke_toml, run_dir=tmp_path / "x", engine="ray")
    with pytest.raises(ValueError, match="differs in federation.rounds"):
        fedamole.run(smoke_toml, run_dir=run_dir, resume=True)
    with pytest.raises(RunDirError):  # the run directory exists: neither resume nor overwrite
        fedamole.run(run_dir / "config.toml", run_dir=run_dir)


def test_load_runs_and_report_read_the_run(finished):
    _, run_dir = finished
    runs = fedamole.load_runs(run_dir)
    assert [run.path for run in runs] == [run_dir] and runs[0].finished
    table = fedamole.report(run_dir)
    assert "FedAMoLE" in table
    assert table == CliRunner().invoke(app, ["report", str(run_dir)]).output
    csv = fedamole.report(run_dir.parent, round_mode="last", format="csv")
    assert (
        csv
        == CliRunner()
        .invoke(app, ["report", str(run_dir.parent), "--round", "last", "--format", "csv"])
        .output
    )
    with pytest.raises(ValueError, match="round_mode 'first'"):
        fedamole.report(run_dir, round_mode="first")
    with pytest.raises(TypeError, match=r"unpack a list: report\(\*paths\)"):
        fedamole.report([run_dir])
