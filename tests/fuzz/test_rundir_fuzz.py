"""Fuzzing run directories: any file of a stopped (between rounds or in the middle of one) or
finished run deleted, or cut at any byte, then ``fedamole report`` and ``fedamole run --resume``.
The report ends cleanly (exit 0 or 2, no traceback); the resume either ends with exactly the
uninterrupted run's records (metrics but wall time, comm.jsonl, predictions.jsonl, every
assignment, done.json) or is refused with an ``error:`` line (exit 2): never a wrong result,
never a traceback (docs/run-directory.md#what-a-resume-checks).

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


# fedit with eval.timing = "both": the received model's results of round r are logged as
# test_global of round r - 1, so a kill in the middle of a round leaves records a resume drops
MID_ROUND = ["federation.algorithm=fedit", "eval.timing=both"]


@pytest.fixture(scope="module")
def bases(repo, tmp_path_factory):
    """Run directories to damage, each with its overrides and the outcome of its config run
    uninterrupted: the smoke run killed before round 2 (its checkpoint holds round 1), finished,
    and (fedit, eval.timing both) killed in the middle of round 2."""
    import fedamole
    from fedamole.config import load
    from fedamole.engines.embedded import run_embedded
    from tests.conftest import run_killed

    smoke = repo / "configs" / "smoke.toml"
    cfg = load(smoke)
    base = tmp_path_factory.mktemp("rundir-fuzz")
    run_embedded(cfg, base / "finished", progress=False)
    run_killed(cfg, base / "killed", kill_round=2)
    other = load(smoke, MID_ROUND)
    run_embedded(other, base / "whole", progress=False)
    seen = []

    def kill_in_round_2(record: dict) -> None:
        seen.append(record["round"] == 2)
        if sum(seen) == 30:
            raise KeyboardInterrupt  # stops the run as a kill would

    with pytest.raises(KeyboardInterrupt):
        fedamole.run(other, run_dir=base / "mid-round", on_record=kill_in_round_2)
    expected = outcome(base / "finished")
    return smoke, {
        "finished": ([], expected, base / "finished"),
        "killed": ([], expected, base / "killed"),
        "mid-round": (MID_ROUND, outcome(base / "whole"), base / "mid-round"),
    }


@settings(FUZZ, max_examples=EXAMPLES)
@given(
    base=st.sampled_from(["killed", "finished", "mid-round"]),
    name=st.sampled_from(FILES),
    cut=st.none() | st.floats(0.0, 1.0, exclude_max=True),
)
def test_a_damaged_file_is_resumed_exactly_or_refused(bases, base, name, cut):
    config, cases = bases
    overrides, expected, source = cases[base]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(source, run_dir)
        target = run_dir / name
        if not target.exists():
            event("file absent: nothing damaged")
        elif cut is None:
            target.unlink()
        else:
            data = target.read_bytes()
            target.write_bytes(data[: int(len(data) * cut)])
        invoke_cli(["report", str(run_dir)])
        args = ["run", str(config), *overrides, "--run-dir", str(run_dir), "--resume"]
        result = invoke_cli(args)
        event(f"{'refused' if result.exit_code else 'resumed'}: {name}")
        if result.exit_code == 0:
            assert (run_dir / "done.json").exists()
            assert outcome(run_dir) == expected, f"{base}: {name} cut at {cut}: a wrong result"
