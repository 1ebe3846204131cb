"""Fuzzing run directories: any file of a stopped or finished run deleted, or cut at any byte, then
``fedamole report`` and ``fedamole run --resume``. The report ends cleanly (exit 0 or 2, no
traceback); the resume either ends with exactly the uninterrupted run's records (metrics but wall
time, comm.jsonl, predictions.jsonl, every assignment, done.json) or is refused with an
``error:`` line (exit 2): never a wrong result, never a traceback
(docs/run-directory.md#what-a-resume-checks).

Each case costs up to a second or two (a resumed round of the smoke config), so this property
runs :data:`EXAMPLES` cases: 12 in CI, a tenth of ``FEDAMOLE_FUZZ_EXAMPLES`` when that is set
(``make fuzz``: 200, about three minutes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.integration.test_resume_checks import outcome

from ._fuzzing import EXAMPLES_ENV, FUZZ, invoke_cli

pytestmark = pytest.mark.fuzz

EXAMPLES = max(12, int(os.environ.get(EXAMPLES_ENV) or 0) // 10)
# Every file a run directory of the smoke config holds (a killed run has no done.json).
FILES = (
    "config.toml",
    "env.json",
    "metrics.jsonl",
    "comm.jsonl",
    "predictions.jsonl",
    "log.txt",
    "done.json",
    "assignments/round_000.json",
    "assignments/round_001.json",
    "assignments/round_002.json",
    "checkpoints/last/state.json",
    "checkpoints/last/tensors.safetensors",
    "checkpoints/best/state.json",
    "checkpoints/best/tensors.safetensors",
)


@pytest.fixture(scope="module")
def bases(repo, tmp_path_factory):
    """The smoke run uninterrupted (its outcome), and two run directories to damage: killed
    before round 2 (checkpoint of round 1) and finished."""
    from fedamole.engines.embedded import run_embedded
    from tests.conftest import run_killed

    smoke = repo / "configs" / "smoke.toml"
    from fedamole.config import load

    cfg = load(smoke)
    base = tmp_path_factory.mktemp("rundir-fuzz")
    run_embedded(cfg, base / "finished", progress=False)
    run_killed(cfg, base / "killed", kill_round=2)
    return (
        smoke,
        outcome(base / "finished"),
        {"finished": base / "finished", "killed": base / "killed"},
    )


@settings(FUZZ, max_examples=EXAMPLES)
@given(
    base=st.sampled_from(["killed", "finished"]),
    name=st.sampled_from(FILES),
    cut=st.none() | st.floats(0.0, 1.0, exclude_max=True),
)
def test_a_damaged_file_is_resumed_exactly_or_refused(bases, base, name, cut):
    config, expected, sources = bases
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(sources[base], run_dir)
        target = run_dir / name
        if not target.exists():
            event("file absent: nothing damaged")
        elif cut is None:
            target.unlink()
        else:
            data = target.read_bytes()
            target.write_bytes(data[: int(len(data) * cut)])
        invoke_cli(["report", str(run_dir)])
        result = invoke_cli(["run", str(config), "--run-dir", str(run_dir), "--resume"])
        event(f"{'refused' if result.exit_code else 'resumed'}: {name}")
        if result.exit_code == 0:
            assert (run_dir / "done.json").exists()
            assert outcome(run_dir) == expected, f"{base}: {name} cut at {cut}: a wrong result"
