"""Run directories never lose data; JSONL logs are read back with line numbers on errors."""

from __future__ import annotations

import json

import pytest

from fedamole.config import Config, load
from fedamole.rundir import JsonlLogger, RunDir, RunDirError, read_jsonl


def test_prepare_writes_config_and_env(tmp_path):
    cfg = Config().replace(**{"run.seed": 5})
    run = RunDir.prepare(cfg, tmp_path / "r")
    assert load(run.config) == cfg
    env = json.loads(run.env.read_text())
    assert env["packages"]["torch"] and "start" in env and "git_sha" in env


def test_existing_directory_is_never_overwritten_silently(tmp_path):
    cfg = Config()
    run = RunDir.prepare(cfg, tmp_path / "r")
    (run.path / "metrics.jsonl").write_text('{"round": 0}\n')
    # no checkpoint: --resume could not continue it, so only --overwrite is offered
    with pytest.raises(RunDirError, match="holds no checkpoint.*--overwrite"):
        RunDir.prepare(cfg, tmp_path / "r")
    run.release()  # the first run ended
    RunDir.prepare(cfg, tmp_path / "r", overwrite=True).release()
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("r.old-")]
    assert len(backups) == 1 and (backups[0] / "metrics.jsonl").read_text() == '{"round": 0}\n'


def test_resume_requires_an_existing_run(tmp_path):
    with pytest.raises(RunDirError, match="cannot resume"):
        RunDir.prepare(Config(), tmp_path / "missing", resume=True)


def test_jsonl_truncate_and_malformed_line(tmp_path):
    logger = JsonlLogger(tmp_path / "m.jsonl")
    for rnd in range(4):
        logger.log({"round": rnd})
    logger.truncate_after(1)
    logger.log({"round": 2, "again": True})
    logger.close()
    assert [r["round"] for r in read_jsonl(tmp_path / "m.jsonl")] == [0, 1, 2]
    (tmp_path / "m.jsonl").write_text('{"round": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not valid JSON"):
        list(read_jsonl(tmp_path / "m.jsonl"))


def test_run_dir_owns_assignments_and_the_done_marker(tmp_path):
    run = RunDir.prepare(Config(), tmp_path / "r")
    assert run.read_assignments() == {} and not run.finished
    run.write_assignment(1, {"modules": {"m": [[0], [1]]}})
    run.write_assignment(0, {"modules": {"m": [[1], [0]]}})
    assert run.read_assignments() == {
        0: {"modules": {"m": [[1], [0]]}},
        1: {"modules": {"m": [[0], [1]]}},
    }
    assert not list(run.assignments.glob("*.tmp"))
    run.mark_done(3)
    assert run.finished and json.loads(run.done.read_text()) == {"last_round": 3}


_HOLD = """
import sys, time
from pathlib import Path
from fedamole.rundir import RunDir
RunDir(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_live_run_is_never_resumed_or_moved_aside_by_another_process(tmp_path):
    import subprocess
    import sys

    cfg = Config()
    run = RunDir.prepare(cfg, tmp_path / "r")
    run.release()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for kwargs in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(RunDirError, match=f"in use by pid {holder.pid} on "):
                RunDir.prepare(cfg, run.path, **kwargs)
        assert [p.name for p in tmp_path.iterdir()] == ["r"]  # nothing was moved aside
    finally:
        holder.kill()
        holder.wait()
    RunDir.prepare(cfg, run.path, resume=True).release()  # a killed holder leaves no stale lock


def test_the_same_process_cannot_open_a_run_twice(tmp_path):
    run = RunDir.prepare(Config(), tmp_path / "r")
    with pytest.raises(RunDirError, match="already in use by this process"):
        RunDir.prepare(Config(), tmp_path / "r", resume=True)
    run.release()
    RunDir.prepare(Config(), tmp_path / "r", resume=True).release()


def test_two_overwrites_in_one_second_keep_both_backups(tmp_path):
    cfg = Config()
    for _ in range(3):
        RunDir.prepare(cfg, tmp_path / "r", overwrite=True).release()
    backups = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.old-"))
    assert len(backups) == 2 and (tmp_path / "r" / "config.toml").is_file()
