"""fedamole bench round: phase timing by wrapped functions, the metric comparison, a real run."""

from __future__ import annotations

import time

import pytest

from fedamole.bench.round import BenchError, bench_round, compare_metrics, format_table
from fedamole.bench.round_worker import PhaseTimer


def test_phase_timer_counts_exclusive_time_and_respects_declared_parents():
    timer = PhaseTimer()
    inner = timer.wrap(lambda: time.sleep(0.02), "inner", None)  # no parent: stays with outer
    child = timer.wrap(lambda: time.sleep(0.02), "child", "outer")  # declared child of outer

    def body():
        inner()
        child()
        time.sleep(0.01)

    timer.wrap(body, "outer", None)()
    assert set(timer.seconds) == {"outer", "child"}
    assert timer.seconds["child"] == pytest.approx(0.02, abs=0.015)
    assert timer.seconds["outer"] == pytest.approx(0.03, abs=0.02)  # inner's 0.02 + its own 0.01


def test_compare_metrics_flags_relative_differences_and_missing_keys():
    same = compare_metrics({"a": 1.0, "b": 2.0}, {"a": 1.0 + 1e-7, "b": 2.0})
    assert same["differing"] == [] and same["max_relative_difference"] < 1e-6
    found = compare_metrics({"a": 1.0, "b": 2.0}, {"a": 1.1, "c": 0.0})
    assert found["differing"] == ["a", "b", "c"]


def test_bench_round_against_a_folder_times_both_and_compares(repo, tmp_path, capsys):
    result = bench_round(
        repo / "configs" / "smoke.toml", [], tmp_path, against=str(repo), repeats=1, client=1
    )
    assert (tmp_path / "round.json").is_file()
    this, other = result["median_seconds"]["this"], result["median_seconds"]["other"]
    assert this["train"] > 0 and other["train"] > 0 and this["client-round"] >= this["train"]
    assert result["metrics"]["differing"] == []  # the same code on both sides
    assert "client-round" in capsys.readouterr().out
    assert "speed-up" in format_table(result)


def test_bench_round_rejects_a_folder_without_the_package(repo, tmp_path):
    with pytest.raises(BenchError, match="no fedamole package"):
        bench_round(repo / "configs" / "smoke.toml", [], tmp_path, against=str(tmp_path))
