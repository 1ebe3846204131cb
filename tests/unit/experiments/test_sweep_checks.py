"""Sweeps refuse what they would otherwise do silently: an axis without labels, a selection or
exclusions that leave no run, overrides of the names and places the sweep gives its runs, and
--devices that are not GPU ids."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedamole.cli import app
from fedamole.experiments.grid import GridError, expand, load_grid
from fedamole.experiments.sweep import plan

runner = CliRunner()


def _grid(tmp_path, repo, body: str, name: str = "g.toml"):
    path = tmp_path / name
    head = f'[sweep]\nbase = "{repo / "configs" / "smoke.toml"}"\nout_dir = "{tmp_path / "out"}"\n'
    path.write_text(head + body)
    return path


@pytest.mark.parametrize(
    "body",
    [
        '[axes.seed]\n"run.seed" = []\n',
        '[axes.a]\nx = { "train.lr" = 0.1 }\n[axes.b]\n',
    ],
)
def test_an_axis_without_labels_is_an_error(tmp_path, repo, body):
    with pytest.raises(GridError, match="has no labels") as info:
        load_grid(_grid(tmp_path, repo, body))
    assert "give it at least one label or remove it" in str(info.value)


def test_an_empty_axis_still_removes_the_parent_s_axis(tmp_path, repo):
    _grid(tmp_path, repo, '[axes.a]\nx = { "train.lr" = 0.1 }\n[axes.b]\ny = {}\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = "g.toml"\n[axes.b]\n')
    assert list(load_grid(child).axes) == ["a"]
    child.write_text('extends = "g.toml"\n[axes.c]\n')  # removes nothing: a mistake
    with pytest.raises(GridError, match="axis `c` has no labels"):
        load_grid(child)


def test_exclusions_that_leave_no_run_are_an_error(tmp_path, repo):
    body = '[axes.a]\nx = { "train.lr" = 0.1 }\ny = {}\n[[exclude]]\na = ["x", "y"]\n'
    grid = load_grid(_grid(tmp_path, repo, body))
    with pytest.raises(GridError, match=r"\[\[exclude\]\] leaves? no run"):
        expand(grid)


def test_a_selection_that_leaves_no_run_is_an_error(tmp_path, repo):
    body = (
        '[axes.a]\nx = { "train.lr" = 0.1 }\ny = {}\n[axes.b]\nu = {}\nv = {}\n'
        '[[exclude]]\na = "x"\nb = "u"\n'
    )
    grid = load_grid(_grid(tmp_path, repo, body))
    assert len(plan(grid, {"a": ["x"]})) == 1
    with pytest.raises(GridError, match="--only a=x b=u selects no run"):
        plan(grid, {"a": ["x"], "b": ["u"]})
    result = runner.invoke(
        app, ["sweep", str(grid.path), "--dry-run", "--only", "a=x", "--only", "b=u"]
    )
    assert result.exit_code == 2 and "selects no run" in result.output


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('[overrides]\n"run.name" = "mine"\n[axes.a]\nx = {}\n', "[overrides]"),
        ('[axes.a]\nx = { "run.name" = "mine" }\n', "axis `a` 'x'"),
        ('[axes.a]\nx = {}\n[[patch]]\nwhen = { a = "x" }\nset = { "run.name" = "m" }\n', "patch"),
        ('[overrides]\n"run.out_dir" = "elsewhere"\n[axes.a]\nx = {}\n', "[overrides]"),
    ],
)
def test_overriding_the_run_s_name_or_place_is_an_error(tmp_path, repo, body, where):
    with pytest.raises(GridError) as info:
        load_grid(_grid(tmp_path, repo, body))
    text = str(info.value)
    assert where in text
    assert "the sweep names every run" in text and "sweep.run_name" in text


@pytest.mark.parametrize("text", ["abc", "0,,1", "0,x", "-1", " "])
def test_devices_must_be_gpu_ids(text):
    from fedamole.experiments.sweep import parse_devices

    with pytest.raises(GridError, match="--devices"):
        parse_devices(text)


def test_devices_accept_indices_and_uuids():
    from fedamole.experiments.sweep import parse_devices

    assert parse_devices("0, 1") == ["0", "1"]
    assert parse_devices("GPU-8f2c,MIG-1a2b") == ["GPU-8f2c", "MIG-1a2b"]
    assert parse_devices(None) is None


def test_the_cli_refuses_bad_devices(tmp_path, repo):
    grid = _grid(tmp_path, repo, '[axes.a]\nx = { "train.lr" = 0.1 }\n')
    result = runner.invoke(app, ["sweep", str(grid), "--jobs", "2", "--devices", "abc"])
    assert result.exit_code == 2
    assert "--devices 'abc'" in result.output and "e.g. --devices 0,1" in result.output
    assert not (tmp_path / "out").exists()


def test_a_run_whose_targets_miss_the_model_is_invalid_before_anything_starts(tmp_path, repo):
    body = '[axes.t]\nok = {}\nbad = { "mole.target_modules" = ["q_prj"] }\n'
    grid = load_grid(_grid(tmp_path, repo, body))
    planned = {p.run.name: p for p in plan(grid)}
    assert planned["ok"].status == "new"
    assert planned["bad"].status == "invalid"
    assert any("`mole.target_modules` entry 'q_prj'" in e for e in planned["bad"].errors)
    result = runner.invoke(app, ["sweep", str(grid.path)])
    assert result.exit_code == 2 and "q_prj" in result.output
    assert not (tmp_path / "out").exists()
