"""CLI: every command has help with an example; validate's exit codes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedamole.cli import app

runner = CliRunner()


def test_top_level_help_lists_commands_and_examples():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "validate", "partition", "bench", "export", "generate"):
        assert command in result.output
    assert "fedamole run configs/demo.toml" in result.output


@pytest.mark.parametrize("command", ["run", "validate", "partition", "bench", "export", "generate"])
def test_each_command_help_shows_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: fedamole " + command in result.output


def test_validate_prints_resolved_config(repo):
    result = runner.invoke(app, ["validate", str(repo / "configs/paper/base.toml")])
    assert result.exit_code == 0
    assert 'name = "meta-llama/Llama-3.2-1B"' in result.output
    assert "num_experts = 30" in result.output


def test_validate_names_every_violation(repo):
    result = runner.invoke(
        app,
        ["validate", str(repo / "configs/paper/base.toml"), "mole.num_experts=3", "mole.top_k=3"],
    )
    assert result.exit_code == 2
    assert "infeasible assignment" in result.output
    assert "`mole.top_k` (3)" in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_resume_checks_the_given_config_against_the_run(repo, tmp_path):
    smoke = str(repo / "configs" / "smoke.toml")
    run_dir = tmp_path / "r"
    started = runner.invoke(app, ["run", smoke, "federation.rounds=1", "--run-dir", str(run_dir)])
    assert started.exit_code == 0, started.output
    other = runner.invoke(app, ["run", smoke, "--resume", "--run-dir", str(run_dir)])
    assert other.exit_code == 2
    assert "differs in federation.rounds" in other.output and "config.toml --resume" in other.output
    own = runner.invoke(
        app, ["run", str(run_dir / "config.toml"), "--resume", "--run-dir", str(run_dir)]
    )
    assert own.exit_code == 0, own.output
    both = runner.invoke(app, ["run", smoke, "--resume", "--overwrite", "--run-dir", str(run_dir)])
    assert both.exit_code == 2 and "choose one" in both.output


def test_version():
    from fedamole import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fedamole {__version__}"
    assert __version__[0].isdigit()
