"""The sweep, report and plot commands: help with an example, clean errors."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from fedamole.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["sweep", "report", "plot"])
def test_help_shows_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: fedamole " + command in result.output


def test_errors_exit_2_with_a_message(tmp_path):
    missing = runner.invoke(app, ["sweep", str(tmp_path / "nope.toml"), "--dry-run"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad_only = runner.invoke(app, ["sweep", str(tmp_path / "g.toml"), "--only", "method"])
    assert bad_only.exit_code == 2 and "AXIS=LABEL" in bad_only.output
    empty = runner.invoke(app, ["report", str(tmp_path)])
    assert empty.exit_code == 2 and "no run with test scores" in empty.output
    bad_round = runner.invoke(app, ["report", str(tmp_path), "--round", "first"])
    # A usage error: its exit code is the parser's (2 in most click releases, 1 in click 8.5).
    assert bad_round.exit_code != 0 and "'first' is not one of" in bad_round.output
    assert "best" in bad_round.output and "last" in bad_round.output


def test_dry_run_of_the_main_grid_from_the_command_line(repo, tmp_path):
    grid = repo / "configs" / "sweeps" / "main.toml"
    result = runner.invoke(
        app, ["sweep", str(grid), "--dry-run", "--out", str(tmp_path), "--only", "method=FedIT"]
    )
    assert result.exit_code == 0, result.output
    assert "21 runs" in result.output and "ni_task__FedIT__seed82" in result.output


def test_plot_help_lists_every_figure():
    from fedamole.analysis.plots import FIGURES
    from fedamole.cli_support import FIGURES as listed

    assert list(listed) == sorted(FIGURES)
    result = runner.invoke(app, ["plot", "--help"])
    assert "One of: " + ", ".join(sorted(FIGURES)) + "." in " ".join(result.output.split())
    assert re.search(r"--projection [\[<]pca\|tsne[\]>]", result.output)  # typer: [..] or <..>


def test_plot_and_report_default_to_the_best_round():
    for command in ("plot", "report"):
        result = runner.invoke(app, [command, "--help"])
        text = " ".join(result.output.split())
        assert re.search(r"--round [\[<]best\|last[\]>]", text), command
        assert "[default: best]" in text, command
