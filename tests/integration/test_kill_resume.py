"""Fault injection with real processes: ``fedamole run`` SIGKILLed at random moments (mid-step,
mid-evaluation, mid-checkpoint: wherever the draw falls), then ``--resume``d, must end with exactly
the logs and assignments of an uninterrupted run; the same with one file of the run directory
deleted or cut after the kill must end so or be refused cleanly; Ctrl-C and SIGTERM must stop the
run cleanly, printing the resume command that then finishes it.

Each case draws its kill time (seeded) uniformly over the first 60 % of the uninterrupted run's
rounds (counted from the end of start-up, when ``config.toml`` appears). A kill that lands before
the first checkpoint must make ``--resume`` refuse with a clear message (nothing to resume from);
the run is then started again with ``--overwrite``. ``FEDAMOLE_KILL_CASES`` (default 1 per
configuration) sets how many kills each configuration gets; ``make fuzz`` runs more. A kill that
misses (the run ended first) is followed by one at half the time, up to three times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import result_records

CASES = int(os.environ.get("FEDAMOLE_KILL_CASES", "1"))
CONFIGS = {
    "fedamole": ["federation.rounds=3"],
    "fedit-both": ["federation.algorithm=fedit", "eval.timing=both", "federation.rounds=3"],
    # rounds 1 and 3 of 4 untested; the kill time drawn from the name's length (37 % of the run)
    # lands mid-run (on this machine in round 3: untested, while it tests round 2's global model)
    "fedit-every2-r4": [
        "federation.algorithm=fedit",
        "eval.timing=both",
        "eval.every=2",
        "federation.rounds=4",
    ],
    "fedprompt-both": ["federation.algorithm=fedprompt", "eval.timing=both"],
}


def _run(repo, overrides, run_dir, *extra, timeout=300):
    cmd = [sys.executable, "-m", "fedamole", "run", str(repo / "configs" / "smoke.toml")]
    cmd += [*overrides, "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc, timeout=300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def _outcome(run_dir) -> tuple[list, dict]:
    assignments = {
        p.name: p.read_text() for p in sorted((run_dir / "assignments").glob("round_*.json"))
    }
    predictions = (run_dir / "predictions.jsonl").read_text()
    return result_records(run_dir), {**assignments, "predictions.jsonl": predictions}


class _References(dict):
    """Each configuration run uninterrupted once, when a test first needs it: (seconds from its
    start-up's end, when ``config.toml`` appears, to its exit; its outcome)."""

    def __init__(self, repo, tmp_path_factory):
        super().__init__()
        self.repo, self.tmp_path_factory = repo, tmp_path_factory

    def __missing__(self, name):
        run_dir = self.tmp_path_factory.mktemp("ref") / name
        proc = _run(self.repo, CONFIGS[name], run_dir)
        started = _started(proc, run_dir)
        code, text = _finish(proc)
        assert code == 0, text
        self[name] = (time.monotonic() - started, _outcome(run_dir))
        return self[name]


@pytest.fixture(scope="module")
def references(repo, tmp_path_factory):
    return _References(repo, tmp_path_factory)


def _started(proc, run_dir, timeout=300) -> float:
    """When the run's start-up (imports, model, data) is over: its config.toml exists."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "config.toml").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return time.monotonic()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(
    repo, tmp_path, references, name
):
    seconds, expected = references[name]
    rng = np.random.default_rng([7, len(name)])
    draws = [float(rng.uniform(0.0, 0.6)) * seconds for _ in range(CASES)]  # inside the rounds
    # A kill that missed (the run ended first: the machine ran faster than while the reference
    # ran, on a shared machine) is followed by a case at half that time, up to three times.
    kills = 0
    for case in range(CASES + 3):
        if case >= CASES and (kills or case - CASES >= 3):
            break
        when = draws[case] if case < CASES else draws[-1] / 2 ** (case - CASES + 1)
        run_dir = tmp_path / f"case{case}"
        proc = _run(repo, CONFIGS[name], run_dir)
        _started(proc, run_dir)
        try:
            proc.wait(timeout=when)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        code, text = _finish(proc)
        assert code in (0, -signal.SIGKILL), text
        assert "Traceback" not in text
        # Killed after its last round was marked done (while printing the summary): finished.
        killed = code == -signal.SIGKILL and not (run_dir / "done.json").exists()
        kills += killed
        if killed:
            code, text = _finish(_run(repo, CONFIGS[name], run_dir, "--resume"))
            if code != 0:  # killed before the first checkpoint: a clear refusal, then a restart
                # the log lines of start-up come first; the refusal is the last line
                refusal = text.strip().splitlines()[-1]
                assert "Traceback" not in text and refusal.startswith("error: no checkpoint"), text
                code, text = _finish(_run(repo, CONFIGS[name], run_dir, "--overwrite"))
            assert code == 0, text
        assert json.loads((run_dir / "done.json").read_text())["last_round"] >= 2
        got = _outcome(run_dir)
        assert got[0] == expected[0], f"case {case}: killed after {when:.1f} s"
        assert got[1] == expected[1]
    assert kills, "no case killed the run before it ended: the test tested nothing"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_says_what_was_saved_and_its_resume_command_works(
    repo, tmp_path, references, signum
):
    """Ctrl-C (SIGINT) or SIGTERM once a round is saved: exit 128 + the signal, no traceback,
    the last saved round and the exact resume command printed; running that command ends with
    the uninterrupted run's outcome."""
    _, expected = references["fedamole"]
    run_dir = tmp_path / "run"
    proc = _run(repo, CONFIGS["fedamole"], run_dir)
    state = run_dir / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    code, text = _finish(proc)
    assert code == 128 + signum, text
    assert "Traceback" not in text
    assert f"interrupted by {signal.Signals(signum).name}" in text
    saved = json.loads(state.read_text())["round"]
    assert f"round {saved} is saved" in text
    command = text.split("continue with: ")[1].splitlines()[0].split()
    assert command[:2] == ["fedamole", "run"] and "--resume" in command
    resumed = subprocess.run(
        [sys.executable, "-m", "fedamole", *command[1:]],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _outcome(run_dir) == expected


SIDE_FILES = (
    "metrics.jsonl",
    "comm.jsonl",
    "predictions.jsonl",
    "env.json",
    "config.toml",
    "done.json",
    "assignments/round_000.json",
    "assignments/round_001.json",
    "checkpoints/last/state.json",
    "checkpoints/last/tensors.safetensors",
    "checkpoints/best/state.json",
    "checkpoints/best/tensors.safetensors",
)


def test_sigkill_then_a_damaged_file_resumes_exactly_or_is_refused(repo, tmp_path, references):
    """SIGKILL at a random moment, then one file of the run directory deleted or cut at a random
    byte (drawn, seeded): ``--resume`` ends with the uninterrupted run's outcome or refuses with
    an ``error:`` line (exit 2), never a traceback and never a wrong result."""
    seconds, expected = references["fedamole"]
    rng = np.random.default_rng([13, CASES])
    for case in range(CASES):
        run_dir = tmp_path / f"case{case}"
        proc = _run(repo, CONFIGS["fedamole"], run_dir)
        _started(proc, run_dir)
        try:
            proc.wait(timeout=float(rng.uniform(0.2, 0.8)) * seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        _finish(proc)
        target = run_dir / SIDE_FILES[int(rng.integers(len(SIDE_FILES)))]
        cut = float(rng.uniform()) if rng.uniform() < 0.5 else None
        if target.exists() and cut is None:
            target.unlink()
        elif target.exists():
            target.write_bytes(target.read_bytes()[: int(target.stat().st_size * cut)])
        code, text = _finish(_run(repo, CONFIGS["fedamole"], run_dir, "--resume"))
        what = f"case {case}: {target.name} {'deleted' if cut is None else f'cut at {cut:.2f}'}"
        assert "Traceback" not in text, what + "\n" + text
        if code == 0:
            assert _outcome(run_dir) == expected, what
        else:
            assert code == 2 and text.strip().splitlines()[-1].startswith("error: "), what + text
