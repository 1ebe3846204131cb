"""``eval.every = 2`` on real smoke runs (3 rounds: rounds 0, 2 and 3 are tested): test records
only for those rounds, ``checkpoints/best``, the summary, ``fedamole report`` and the per-round
figure over them alone, and a run killed after an untested round and resumed equals an
uninterrupted one (the kill with real processes is a configuration of test_kill_resume.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedamole.analysis.plots import plot_rounds
from fedamole.analysis.results import entries, load_runs
from fedamole.cli import app
from fedamole.engines.best import selection_split
from fedamole.engines.embedded import run_embedded
from fedamole.engines.summary import summarize_run
from fedamole.rundir import checkpoint_info, load_checkpoint, read_jsonl
from tests.conftest import result_records, run_killed

FAST = {
    "train.steps": 2,
    "data.test_cap": 2,
    "data.eval_cap": 2,
    "eval.max_new_tokens": 2,
    "federation.rounds": 3,
    "eval.every": 2,
}
CASES = {
    "fedit": {"federation.algorithm": "fedit", "eval.timing": "both"},
    "fedamole": {},
}
TESTED = [0, 2, 3]


@pytest.fixture(scope="module")
def uninterrupted(smoke, tmp_path_factory):
    """``get(name)`` -> (config, run directory) of the case run uninterrupted (once per module)."""
    done = {}

    def get(name: str):
        if name not in done:
            cfg = smoke.replace(**FAST, **CASES[name])
            path = tmp_path_factory.mktemp(name) / "run"
            run_embedded(cfg, path, progress=False)
            done[name] = cfg, path
        return done[name]

    return get


def _rounds(path, split: str, metric: str | None = None) -> list[int]:
    records = read_jsonl(path / "metrics.jsonl", steps=False)
    return sorted(
        {r["round"] for r in records if r["split"] == split and metric in (None, r["metric"])}
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_only_the_evaluated_rounds_have_test_records(uninterrupted, name):
    cfg, path = uninterrupted(name)
    assert _rounds(path, "train", "loss") == [1, 2, 3]  # training never skips a round
    assert _rounds(path, "test") == TESTED
    assert _rounds(path, "eval") == TESTED  # eval/loss comes with the personalized evaluation
    assert _rounds(path, "test_global") == (TESTED if name == "fedit" else [])
    # the best checkpoint, the summary and the report see the tested rounds only
    best = checkpoint_info(path / "checkpoints", "best")
    (entry,) = [e for e in entries(load_runs([path])) if e.split == selection_split(cfg)]
    assert best["round"] in TESTED and best["round"] == entry.value("best")[0]
    assert entry.value("last")[0] == 3
    summary = summarize_run(path)
    assert summary.rounds == 3 and summary.first and summary.last
    assert len(summary.first) == len(summary.last) == cfg.federation.num_clients


def test_report_and_the_rounds_figure_use_the_tested_rounds(uninterrupted):
    _, path = uninterrupted("fedit")
    for mode in ("best", "last"):
        result = CliRunner().invoke(app, ["report", str(path), "--round", mode])
        assert result.exit_code == 0, result.output
        assert "nan" not in result.output.lower()
    (drawing,) = plot_rounds(load_runs([path]), "best")
    lines = drawing.axes[0].get_lines()
    assert len(lines) == 2  # FedIT and FedIT-FT
    for line in lines:
        assert list(line.get_xdata()) == TESTED


@pytest.mark.parametrize(("name", "kill_round"), [("fedit", 2), ("fedit", 3), ("fedamole", 2)])
def test_a_kill_after_an_untested_round_then_resume_equals_uninterrupted(
    uninterrupted, tmp_path, name, kill_round
):
    """Killed at the start of round 2 (round 1, untested, is the last checkpoint) or of round 3
    (round 2's received model not yet tested): the resumed run's records and best checkpoint are
    the uninterrupted run's."""
    cfg, full = uninterrupted(name)
    run_killed(cfg, tmp_path / "r", kill_round=kill_round)
    assert checkpoint_info(tmp_path / "r" / "checkpoints")["round"] == kill_round - 1
    run_embedded(cfg, tmp_path / "r", resume=True, progress=False)
    assert result_records(tmp_path / "r") == result_records(full)
    got, expected = (checkpoint_info(p / "checkpoints", "best") for p in (tmp_path / "r", full))
    assert got == expected
    best = [load_checkpoint(p / "checkpoints", "best") for p in (tmp_path / "r", full)]
    assert _same(best[0], best[1])


def _same(a, b) -> bool:
    """Equal checkpoint contents: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
