"""Paths a user gives and files a user may have damaged: an --out or --plot that cannot be
written, `~` in config paths, a bad MPLBACKEND, a damaged export folder. Each is a clear error
(field or option, value, fix), never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from typer.testing import CliRunner

import fedamole
from fedamole.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def smoke_toml(repo):
    return str(repo / "configs" / "smoke.toml")


@pytest.fixture(scope="module")
def exported(smoke_toml, tmp_path_factory):
    """A finished one-step run of FedAMoLE and of FedIT, and client 0's export of each."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for algorithm in ("fedamole", "fedit"):
        run_dir = root / f"run-{algorithm}"
        fedamole.run(
            smoke_toml,
            run_dir=run_dir,
            train__steps=1,
            federation__rounds=1,
            eval__test_init=False,
            federation__algorithm=algorithm,
        )
        folder = root / f"export-{algorithm}"
        result = runner.invoke(app, ["export", str(run_dir), "--client", "0", "--out", str(folder)])
        assert result.exit_code == 0, result.output
        out[algorithm] = run_dir, folder
    return out


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


def _clean_error(result, *expected):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no uncaught error
    for text in expected:
        assert text in result.output, result.output


def test_partition_plot_under_a_file(smoke_toml, a_file):
    result = runner.invoke(app, ["partition", smoke_toml, "--plot", str(a_file / "x.png")])
    _clean_error(result, "--plot", str(a_file / "x.png"), "is a file")


def test_plot_out_under_a_file(exported, a_file):
    run_dir, _ = exported["fedamole"]
    result = runner.invoke(app, ["plot", "rounds", str(run_dir), "--out", str(a_file / "figs")])
    _clean_error(result, "--out", str(a_file / "figs"), "is a file")


def test_export_out_under_a_file(exported, a_file):
    run_dir, _ = exported["fedamole"]
    result = runner.invoke(
        app, ["export", str(run_dir), "--client", "0", "--out", str(a_file / "exp")]
    )
    _clean_error(result, "--out", str(a_file / "exp"), "is a file")


def test_sweep_out_under_a_file(tmp_path, repo, a_file):
    grid = tmp_path / "g.toml"
    grid.write_text(f'[sweep]\nbase = "{repo / "configs" / "smoke.toml"}"\n[axes.a]\nx = {{}}\n')
    result = runner.invoke(app, ["sweep", str(grid), "--out", str(a_file / "runs")])
    _clean_error(result, "--out", str(a_file / "runs"), "is a file")


def test_run_dir_under_a_file(smoke_toml, a_file):
    result = runner.invoke(app, ["run", smoke_toml, "--run-dir", str(a_file / "r")])
    _clean_error(result, str(a_file / "r"))


def test_tilde_in_out_dir_is_expanded(smoke_toml, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cfg = fedamole.load_config(smoke_toml, run__out_dir="~/runs", run__name="t")
    assert fedamole.api.run_path(cfg) == tmp_path / "home" / "runs" / "t"
    assert fedamole.api.run_path(cfg, "~/elsewhere") == tmp_path / "home" / "elsewhere"
    assert not (tmp_path / "~").exists()


def test_tilde_in_a_grid_s_out_dir_is_expanded(tmp_path, repo, monkeypatch):
    from fedamole.experiments.grid import expand, load_grid

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    grid = tmp_path / "g.toml"
    grid.write_text(
        f'[sweep]\nbase = "{repo / "configs" / "smoke.toml"}"\nout_dir = "~/sw"\n'
        "[axes.a]\nx = {}\n"
    )
    (run,) = expand(load_grid(grid))
    assert run.run_dir == tmp_path / "home" / "sw" / "x"


def test_tilde_in_model_name_reaches_the_folder(smoke_toml, tmp_path, monkeypatch):
    from fedamole.models import load_backbone, tiny_causal_lm

    home = tmp_path / "home"
    tiny_causal_lm("llama").save_pretrained(home / "m")
    monkeypatch.setenv("HOME", str(home))
    assert load_backbone("~/m").config.hidden_size == 32


@pytest.fixture()
def fresh_matplotlib():
    """matplotlib unimported for the test (so that it reads MPLBACKEND again), and every
    matplotlib module as it was afterwards."""
    saved = {k: m for k, m in sys.modules.items() if k.partition(".")[0] == "matplotlib"}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [k for k in sys.modules if k.partition(".")[0] == "matplotlib"]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.mark.parametrize("command", ["partition", "plot"])
@pytest.mark.usefixtures("fresh_matplotlib")
def test_a_bad_mplbackend_is_named(command, smoke_toml, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "no-such-backend")
    run_dir, _ = exported["fedamole"]
    args = (
        ["partition", smoke_toml, "--plot", str(tmp_path / "p.png")]
        if command == "partition"
        else ["plot", "rounds", str(run_dir), "--out", str(tmp_path / "f")]
    )
    result = runner.invoke(app, args)
    _clean_error(result, "MPLBACKEND", "'no-such-backend'", "unset MPLBACKEND")


def _damage_state(folder):
    (folder / "mole_state.safetensors").write_bytes(b"garbage")


def _truncate_state(folder):
    path = folder / "mole_state.safetensors"
    path.write_bytes(path.read_bytes()[:200])


def _bad_manifest(folder):
    (folder / "fedamole_export.json").write_text("{")


def _manifest_without_base(folder):
    path = folder / "fedamole_export.json"
    manifest = json.loads(path.read_text())
    del manifest["base_model"]
    path.write_text(json.dumps(manifest))


def _manifest_not_a_table(folder):
    (folder / "fedamole_export.json").write_text("[1, 2]")


def _damage_adapter(folder):
    (folder / "adapter_model.safetensors").write_bytes(b"garbage")


def _bad_adapter_config(folder):
    (folder / "adapter_config.json").write_text("{")


@pytest.mark.parametrize(
    ("algorithm", "damage"),
    [
        ("fedamole", _damage_state),
        ("fedamole", _truncate_state),
        ("fedamole", _bad_manifest),
        ("fedamole", _manifest_without_base),
        ("fedamole", _manifest_not_a_table),
        ("fedit", _damage_adapter),
        ("fedit", _bad_adapter_config),
    ],
)
def test_a_damaged_export_is_a_clear_error(exported, tmp_path, algorithm, damage):
    _, folder = exported[algorithm]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    damage(copy)
    result = runner.invoke(app, ["generate", str(copy), "Name a colour.", "--max-new-tokens", "2"])
    _clean_error(result, str(copy), "damaged", "fedamole export")


def test_bench_out_under_a_file(a_file):
    result = runner.invoke(app, ["bench", "assign", "--quick", "--out", str(a_file / "b")])
    _clean_error(result, "--out", str(a_file / "b"), "is a file")


def test_an_out_folder_that_is_not_writable(smoke_toml, tmp_path, monkeypatch):
    import fedamole.cli_support

    # root may write anywhere, so the refusal of a read-only folder is simulated
    real = os.access
    monkeypatch.setattr(
        fedamole.cli_support.os,
        "access",
        lambda path, mode, **kw: False if mode & os.W_OK else real(path, mode, **kw),
    )
    result = runner.invoke(app, ["partition", smoke_toml, "--plot", str(tmp_path / "p.png")])
    _clean_error(result, "--plot", f"{tmp_path} is not writable")


def test_tilde_in_extends_is_expanded(tmp_path, monkeypatch, repo):
    from fedamole.config import load
    from fedamole.experiments.grid import load_grid

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "base.toml").write_text("[train]\nsteps = 7\n")
    child = tmp_path / "child.toml"
    child.write_text('extends = "~/base.toml"\n')
    assert load(child).train.steps == 7
    (home / "g.toml").write_text(
        f'[sweep]\nbase = "{repo / "configs" / "smoke.toml"}"\n[axes.a]\nx = {{}}\n'
    )
    grid = tmp_path / "g2.toml"
    grid.write_text('extends = "~/g.toml"\n')
    assert list(load_grid(grid).axes) == ["a"]
