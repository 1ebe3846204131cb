"""Stopping ``fedamole run``: Ctrl-C and SIGTERM become :class:`Interrupted` (so every
``finally`` runs), and the message says what was saved and the command that goes on, true to
the run directory (docs/run-directory.md#starting-resuming-overwriting). The real-signal test is
in tests/integration/test_kill_resume.py."""

from __future__ import annotations

import json
import os
import signal

import pytest

from fedamole.cli_support import Interrupted, interrupts_as_exceptions, what_was_saved
from fedamole.config import Config
from fedamole.rundir import RunDir, RunDirError, save_checkpoint


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_becomes_an_exception_and_the_handlers_come_back(signum, code):
    before = signal.getsignal(signum)
    cleaned = []
    with pytest.raises(Interrupted) as stopped, interrupts_as_exceptions():
        try:
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0.01)  # let the handler run
        finally:
            cleaned.append(True)
    assert cleaned and stopped.value.exit_code == code
    assert signal.getsignal(signum) is before


def test_what_was_saved_is_true_to_the_run_directory(tmp_path):
    start = ["configs/smoke.toml", "train.steps=2", "--run-dir", str(tmp_path / "r")]
    assert "nothing was written" in what_was_saved(tmp_path / "r", start)
    run = RunDir.prepare(Config(), tmp_path / "r")
    run.release()
    text = what_was_saved(run.path, start)
    assert "no round was saved" in text and "--resume" not in text
    assert text.endswith(
        f"fedamole run configs/smoke.toml train.steps=2 --run-dir {run.path} --overwrite"
    )
    save_checkpoint(run.checkpoints, {"round": 3, "x": 1})
    text = what_was_saved(run.path, start, "flower")
    assert "round 3 is saved" in text
    assert text.endswith(f"fedamole run {run.config} --resume --run-dir {run.path} --engine flower")
    assert json.loads((run.checkpoints / "last" / "state.json").read_text())["round"] == 3


def test_resuming_nothing_says_to_start_without_resume_and_that_works(tmp_path):
    with pytest.raises(RunDirError, match="start it without --resume"):
        RunDir.prepare(Config(), tmp_path / "new", resume=True)
    RunDir.prepare(Config(), tmp_path / "new").release()  # what it says
    (tmp_path / "new" / "config.toml").unlink()
    with pytest.raises(RunDirError, match="--overwrite instead of --resume") as refused:
        RunDir.prepare(Config(), tmp_path / "new", resume=True)
    assert "without --resume" not in str(refused.value)
    RunDir.prepare(Config(), tmp_path / "new", overwrite=True).release()  # what it says
