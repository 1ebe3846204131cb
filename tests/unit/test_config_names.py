"""Shipped configs: `configs/` is package data (fedamole/configs in the wheel) and a config can be
named (`fedamole run paper/snli_dir0.1`) from any directory; unknown names list what exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages
from typer.testing import CliRunner

from fedamole.cli import app
from fedamole.config import load
from fedamole.config.files import resolve_config_path, shipped_config_dir, shipped_config_names

runner = CliRunner()


def test_a_name_resolves_to_the_shipped_config_from_any_directory(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped_config_dir() == repo / "configs"  # a checkout: the repository's folder
    path = resolve_config_path("paper/snli_dir0.1")
    assert path == repo / "configs" / "paper" / "snli_dir0.1.toml"
    cfg = load("paper/snli_dir0.1", ["federation.num_clients=20"])
    assert cfg.data.dataset == "snli" and cfg.partition.alpha == 0.1
    assert cfg.federation.num_clients == 20
    assert load("smoke") == load(repo / "configs" / "smoke.toml")


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").write_text('[run]\nname = "mine"\n')  # a file without .toml
    assert resolve_config_path("smoke") == Path("smoke")
    assert load("smoke").run.name == "mine"


def test_unknown_names_list_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = shipped_config_names()
    assert {"demo", "smoke", "paper/snli_dir0.1", "scenarios/synthetic_task"} <= set(names)
    assert not [n for n in names if n.startswith("sweeps/")]  # grids, not experiment configs
    with pytest.raises(FileNotFoundError, match=r"paper/nope is neither .*paper/snli_dir0\.1"):
        resolve_config_path("paper/nope")
    with pytest.raises(FileNotFoundError, match=r"nope\.toml does not exist.*without \.toml"):
        load("nope.toml")


def test_cli_runs_and_validates_a_named_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "paper/snli_dir0.1"])
    assert result.exit_code == 0, result.output
    assert 'dataset = "snli"' in result.output
    result = runner.invoke(app, ["run", "paper/snli_dir01", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "paper/snli_dir01 is neither" in result.output
    assert "paper/snli_dir0.1" in result.output
    assert not (tmp_path / "r").exists()


def _pyproject(repo: Path) -> dict:
    return tomllib.loads((repo / "pyproject.toml").read_text())


def test_the_package_list_covers_src_and_every_config(repo):
    """pyproject lists packages by hand (to map configs/ into fedamole/configs): it must name
    every package under src/ and every folder of configs/, and its globs every config file."""
    setup = _pyproject(repo)["tool"]["setuptools"]
    assert setup["package-dir"] == {"": "src", "fedamole.configs": "configs"}
    configs = repo / "configs"
    config_packages = {"fedamole.configs"} | {
        "fedamole.configs." + ".".join(p.relative_to(configs).parts)
        for p in configs.rglob("*")
        if p.is_dir() and p.name != "__pycache__"
    }
    assert set(setup["packages"]) == set(find_packages(repo / "src")) | config_packages
    data = setup["package-data"]
    for file in configs.rglob("*.toml"):
        package = ".".join(("fedamole.configs", *file.parent.relative_to(configs).parts))
        assert any(file.match(glob) for glob in data.get(package, [])), file


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_resolves_names(repo, tmp_path):
    """Build the wheel from a copy of the sources, unpack it, and resolve a name with it alone."""
    source = tmp_path / "src-copy"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((repo / name).read_bytes())
    for name in ("src", "configs"):
        _copy_tree(repo / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps"]
    build = subprocess.run(
        [*pip_wheel, "--no-build-isolation", "-w", str(tmp_path / "dist"), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("fedamole-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    shipped = {str(p.relative_to(repo)) for p in (repo / "configs").rglob("*.toml")}
    assert {f"fedamole/{name}" for name in shipped} <= names
    assert "fedamole/configs/paper/snli_dir0.1.toml" in names
    probe = (
        "import fedamole.config.files as f; from fedamole.config import load; "
        "print(f.resolve_config_path('paper/snli_dir0.1')); "
        "print(load('paper/snli_dir0.1').data.dataset)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    path, dataset = out.stdout.split()
    assert Path(path) == tmp_path / "site" / "fedamole" / "configs" / "paper" / "snli_dir0.1.toml"
    assert dataset == "snli"


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
