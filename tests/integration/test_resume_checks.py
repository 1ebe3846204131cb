"""Resume trusts nothing it has not checked (docs/run-directory.md#what-a-resume-checks): every
file a resume relies on is checked against the checkpoint, and either rebuilt from what the
checkpoint holds or refused with the cause and a fix that works; each piece of advice a refusal
gives is followed here and must work.

One uninterrupted smoke run is the reference; one run killed at the start of round 2 (its
checkpoint holds round 1) is copied for each case and damaged.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from fedamole.cli import app
from fedamole.engines.embedded import run_embedded
from fedamole.rundir import CheckpointError
from tests.conftest import result_records, run_killed


def outcome(path) -> tuple:
    """What an uninterrupted run and a resumed one must agree on: metrics (wall time aside),
    comm.jsonl, predictions.jsonl and every assignment."""
    assignments = {p.name: p.read_text() for p in sorted((path / "assignments").glob("*.json"))}
    return (
        result_records(path),
        (path / "comm.jsonl").read_text(),
        (path / "predictions.jsonl").read_text(),
        assignments,
    )


@pytest.fixture(scope="module")
def runs(smoke, tmp_path_factory):
    """(the uninterrupted run's outcome, a run killed before round 2: its checkpoint holds 1)."""
    base = tmp_path_factory.mktemp("resume-checks")
    run_embedded(smoke, base / "full", progress=False)
    run_killed(smoke, base / "killed", kill_round=2)
    return outcome(base / "full"), base / "killed"


@pytest.fixture
def killed(runs, tmp_path):
    """A fresh copy of the killed run, to damage."""
    path = tmp_path / "run"
    shutil.copytree(runs[1], path)
    return path


def resume_cli(repo, path, *extra):
    config = str(repo / "configs" / "smoke.toml")
    return CliRunner().invoke(app, ["run", config, "--run-dir", str(path), *extra])


def test_a_missing_comm_jsonl_is_rebuilt_from_the_checkpoint(smoke, runs, killed, caplog):
    (killed / "comm.jsonl").unlink()
    run_embedded(smoke, killed, resume=True, progress=False)
    assert outcome(killed) == runs[0]
    assert "comm.jsonl" in caplog.text and "rebuilt" in caplog.text


def test_a_cut_comm_jsonl_is_rebuilt_from_the_checkpoint(smoke, runs, killed):
    text = (killed / "comm.jsonl").read_text()
    (killed / "comm.jsonl").write_text(text[: len(text) // 3])
    run_embedded(smoke, killed, resume=True, progress=False)
    assert outcome(killed) == runs[0]


def test_missing_or_edited_assignments_are_rebuilt_from_the_checkpoint(smoke, runs, killed):
    (killed / "assignments" / "round_000.json").unlink()
    (killed / "assignments" / "round_001.json").write_text('{"modules": {')
    run_embedded(smoke, killed, resume=True, progress=False)
    assert outcome(killed) == runs[0]


def test_missing_config_and_env_are_written_again(smoke, runs, killed):
    config = (killed / "config.toml").read_text()
    (killed / "config.toml").unlink()
    (killed / "env.json").unlink()
    run_embedded(smoke, killed, resume=True, progress=False)
    assert outcome(killed) == runs[0]
    assert (killed / "config.toml").read_text() == config
    assert json.loads((killed / "env.json").read_text())["format"] == 1


def test_a_missing_last_checkpoint_resumes_from_best(smoke, runs, killed, caplog):
    best = json.loads((killed / "checkpoints" / "best" / "state.json").read_text())["round"]
    shutil.rmtree(killed / "checkpoints" / "last")
    run_embedded(smoke, killed, resume=True, progress=False)
    assert outcome(killed) == runs[0]
    assert f"round {best}" in caplog.text and "checkpoints/best" in caplog.text


@pytest.mark.parametrize("name", ["tensors.safetensors", "state.json"])
def test_a_corrupt_last_checkpoint_resumes_from_best(smoke, runs, killed, name):
    damaged = killed / "checkpoints" / "last" / name
    damaged.write_bytes(damaged.read_bytes()[:100])
    run_embedded(smoke, killed, resume=True, progress=False)
    assert outcome(killed) == runs[0]


def test_a_finished_run_resumed_from_an_earlier_checkpoint_is_unfinished_meanwhile(
    smoke, runs, tmp_path
):
    """A run whose last checkpoint is gone, resumed from best: its done.json no longer tells the
    truth while the later rounds are played again, so it is removed until they are."""
    path = tmp_path / "run"
    run_embedded(smoke, path, progress=False)
    shutil.rmtree(path / "checkpoints" / "last")
    seen = []
    run_embedded(
        smoke,
        path,
        resume=True,
        progress=False,
        on_round=lambda rnd: seen.append((path / "done.json").exists()),
    )
    assert seen and not any(seen)
    assert (path / "done.json").exists() and outcome(path) == runs[0]


def test_missing_predictions_are_refused_and_overwrite_works(repo, smoke, runs, killed):
    (killed / "predictions.jsonl").unlink()
    with pytest.raises(CheckpointError, match=r"predictions\.jsonl.*missing.*--overwrite"):
        run_embedded(smoke, killed, resume=True, progress=False)
    result = resume_cli(repo, killed, "--resume")
    assert result.exit_code == 2 and "predictions.jsonl" in result.output
    assert "Traceback" not in result.output
    result = resume_cli(repo, killed, "--overwrite")  # the fix the message gives
    assert result.exit_code == 0, result.output
    assert outcome(killed) == runs[0]


def test_predictions_cut_in_the_middle_are_refused_naming_the_round(smoke, killed):
    path = killed / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:10])  # round 0, client 0: cut mid-record
    with pytest.raises(CheckpointError, match=r"predictions\.jsonl.*round 0"):
        run_embedded(smoke, killed, resume=True, progress=False)


def test_a_round_with_records_of_only_some_clients_is_refused(smoke, killed):
    path = killed / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    kept = [r for r in records if not (r["round"] == 1 and r["client"] == 2)]
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl.*round 1"):
        run_embedded(smoke, killed, resume=True, progress=False)
    assert (killed / "metrics.jsonl").read_text() == "".join(
        json.dumps(r, sort_keys=True) + "\n" for r in kept
    )  # a refusal changes nothing


def test_no_checkpoint_at_all_says_so_and_overwrite_works(repo, smoke, runs, tmp_path):
    path = tmp_path / "run"
    run_killed(smoke, path, kill_round=0)  # before round 0 was saved
    result = resume_cli(repo, path, "--resume")
    assert result.exit_code == 2, result.output
    assert "ended before its first round was saved" in result.output
    assert "--overwrite" in result.output and "without --resume" not in result.output
    result = resume_cli(repo, path, "--overwrite")
    assert result.exit_code == 0, result.output
    assert outcome(path) == runs[0]


def test_a_deleted_checkpoint_is_not_called_a_run_that_never_saved(repo, smoke, killed):
    shutil.rmtree(killed / "checkpoints")
    result = resume_cli(repo, killed, "--resume")
    assert result.exit_code == 2, result.output
    assert "ended before its first round was saved" not in result.output
    assert "round 1" in result.output and "--overwrite" in result.output


def test_an_existing_run_without_checkpoint_is_not_offered_resume(repo, smoke, tmp_path):
    path = tmp_path / "run"
    run_killed(smoke, path, kill_round=0)
    result = resume_cli(repo, path)
    assert result.exit_code == 2, result.output
    assert "pass --resume" not in result.output and "--overwrite" in result.output


def test_resume_without_config_or_checkpoint_names_a_fix_that_works(repo, smoke, runs, tmp_path):
    path = tmp_path / "run"
    run_killed(smoke, path, kill_round=0)
    (path / "config.toml").unlink()
    result = resume_cli(repo, path, "--resume")
    assert result.exit_code == 2, result.output
    assert "without --resume" not in result.output and "--overwrite" in result.output
    assert resume_cli(repo, path, "--overwrite").exit_code == 0
    assert outcome(path) == runs[0]


def test_an_existing_run_with_a_checkpoint_is_offered_resume_and_that_works(repo, runs, killed):
    result = resume_cli(repo, killed)
    assert result.exit_code == 2 and "pass --resume to continue it" in result.output
    result = resume_cli(repo, killed, "--resume")
    assert result.exit_code == 0, result.output
    assert outcome(killed) == runs[0]
    result = resume_cli(repo, killed)  # finished now: only starting again is offered
    assert result.exit_code == 2 and "already holds a finished run" in result.output
    assert "--resume" not in result.output
