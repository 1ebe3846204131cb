"""CLI: every command has help with an example; validate's exit codes."""

from __future__ import annotations

import re

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


COMMANDS = ["run", "validate", "partition", "bench", "sweep", "report", "plot", "deploy-local"]
COMMANDS += ["export", "generate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_plain_text_with_every_argument_described(command):
    """No rich-markup escape (``\\[default: ...]``) and a description for every argument."""
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "\\[" not in result.output
    assert "Positional arguments" not in result.output  # listed once, under "Arguments"
    arguments = result.output.split("Arguments:\n")[1].split("Options:")[0]
    for line in arguments.splitlines():
        if line.startswith("  ") and not line.startswith("   "):  # a row: NAME then its help
            assert len(line.split(None, 1)) == 2, line


def test_run_help_shows_defaults_and_engine_choices():
    text = " ".join(runner.invoke(app, ["run", "--help"]).output.split())  # whatever the width
    assert "[default: embedded]" in text
    assert re.search(r"--engine [\[<]embedded\|flower[\]>]", text)  # typer: [..] or <..>
    assert re.search(r"(?i)config (<path> )?Experiment TOML", text)  # the argument's own help
    assert "[required]" in text


def test_bench_help_names_every_benchmark():
    from fedamole.bench import BENCHMARKS

    result = runner.invoke(app, ["bench", "--help"])
    for name in (*BENCHMARKS, "round", "step", "all"):
        assert name in result.output, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "step"], "`bench step` needs a CONFIG"),
        (["bench", "step", "configs/smoke.toml", "--algorithm", "nope"], "federation.algorithm"),
        (["bench", "step", "configs/smoke.toml", "--client", "9"], "--client 9"),
        (["bench", "layer", "configs/smoke.toml"], "only `bench round` and `bench step`"),
    ],
)
def test_bench_step_refuses_bad_arguments_before_any_process_starts(
    repo, monkeypatch, args, message
):
    monkeypatch.chdir(repo)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
