"""Readers of run directories (report, plot, load_runs) on damaged, running and copied runs
(docs/run-directory.md#reading-a-run-directory): a half-written last line is left out with a
warning, a broken line before it is an error naming the run, the file and the line, one broken
run never hides the others, unfinished runs are marked, copies of one run count once."""

from __future__ import annotations

import json
import shutil

import pytest

import fedamole
from fedamole.analysis.report import build_report, format_markdown
from fedamole.analysis.results import load_runs
from tests.unit.analysis.test_results import _config, _fake_run, _with_predictions

SCENARIO = "SNLI α=1"


def _two_seeds(tmp_path, *, done=True):
    """FedAMoLE on seeds 1 and 2 (client means 0.5 / 0.7 at round 1, 0.6 / 0.8 at round 2)."""
    for seed, base in ((1, 0.5), (2, 0.7)):
        scores = {(1, 0): base, (1, 1): base, (2, 0): base + 0.1, (2, 1): base + 0.1}
        _fake_run(tmp_path, f"s{seed}", _config("fedamole", seed), scores, done=done)


def test_a_half_written_last_line_is_left_out_with_a_warning(tmp_path, caplog):
    _two_seeds(tmp_path)
    for name in ("metrics.jsonl", "comm.jsonl", "predictions.jsonl"):
        with (tmp_path / "s1" / name).open("a") as fh:
            fh.write('{"round": 2, "client": 1, "spl')  # a record being written
    report = build_report([tmp_path])
    assert report.cells["FedAMoLE", SCENARIO].n == 2
    assert report.cells["FedAMoLE", SCENARIO].mean == pytest.approx(70.0)
    for name in ("metrics.jsonl", "comm.jsonl"):
        assert f"{tmp_path / 's1' / name}: left out its half-written last line" in caplog.text


def test_a_broken_line_in_the_middle_skips_that_run_naming_run_file_and_line(tmp_path, caplog):
    _two_seeds(tmp_path)
    _fake_run(tmp_path, "l1", _config("local", 1), {(1, 0): 0.1, (1, 1): 0.1})
    metrics = tmp_path / "s2" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + '{"round": 1, oops\n' + "".join(lines[1:]))
    report = build_report([tmp_path])
    assert report.cells["FedAMoLE", SCENARIO].n == 1  # seed 1 still reported
    assert ("Local", SCENARIO) in report.cells
    why = f"{metrics}:2: not valid JSON"
    assert why in caplog.text
    text = format_markdown(report)
    assert "Left out 1 run(s)" in text and "s2" in text and "metrics.jsonl:2" in text
    with pytest.raises(ValueError, match=r"s2.*metrics\.jsonl:2: not valid JSON"):
        build_report([tmp_path / "s2"])  # the only run: the error names it


def test_a_broken_config_or_comm_file_skips_only_that_run(tmp_path, caplog):
    _two_seeds(tmp_path)
    (tmp_path / "s1" / "config.toml").write_text("[federation\n")
    (tmp_path / "s2" / "comm.jsonl").write_text('{"round": 1\n{"round": 1}\n')
    _fake_run(tmp_path, "l1", _config("local", 1), {(1, 0): 0.1, (1, 1): 0.1})
    runs = load_runs([tmp_path])
    assert [run.name for run in runs] == ["l1"]
    assert "s1" in caplog.text and "config.toml" in caplog.text
    assert "comm.jsonl:1: not valid JSON" in caplog.text


def test_broken_predictions_fall_back_to_seeds_only_for_that_run(tmp_path, caplog):
    for seed in (1, 2):
        ours = _fake_run(tmp_path, f"a{seed}", _config("fedamole", seed), {(1, 0): 1.0})
        theirs = _fake_run(tmp_path, f"l{seed}", _config("local", seed), {(1, 0): 0.0})
        _with_predictions(ours, {0: [1, 1]})
        _with_predictions(theirs, {0: [0, 0]})
    path = tmp_path / "l2" / "predictions.jsonl"
    path.write_text("{oops\n" + path.read_text())
    report = build_report([tmp_path], against="Local")
    assert not report.paired["FedAMoLE", SCENARIO].examples
    assert f"{path}:1: not valid JSON" in caplog.text


def test_unfinished_runs_are_marked_in_the_table(tmp_path):
    _two_seeds(tmp_path)
    (tmp_path / "s2" / "done.json").unlink()  # still being written
    text = format_markdown(build_report([tmp_path]))
    row = next(line for line in text.splitlines() if line.startswith("| FedAMoLE"))
    assert "†" in row
    assert "†: includes runs not finished (no done.json): s2" in text


def test_load_runs_of_a_file_is_a_clear_error(tmp_path):
    _two_seeds(tmp_path)
    with pytest.raises(NotADirectoryError, match=r"config\.toml is a file.*s1"):
        load_runs([tmp_path / "s1" / "config.toml"])
    with pytest.raises(NotADirectoryError, match="metrics.jsonl is a file"):
        fedamole.load_runs(tmp_path / "s1" / "metrics.jsonl")


def test_copies_of_one_run_count_once(tmp_path, caplog):
    _two_seeds(tmp_path)
    shutil.copytree(tmp_path / "s1", tmp_path / "copy-of-s1")
    report = build_report([tmp_path])
    assert report.cells["FedAMoLE", SCENARIO].n == 2
    assert "copy-of-s1" in caplog.text and "same config and seed" in caplog.text
    assert "copy-of-s1" in format_markdown(report)


def test_a_best_round_0_is_named_in_the_report(tmp_path):
    config = _config("fedamole", 1)
    _fake_run(tmp_path, "s1", config, {(0, 0): 0.9, (1, 0): 0.5, (2, 0): 0.6})
    text = format_markdown(build_report([tmp_path]))
    assert "is round 0 (the untrained model" in text and "s1" in text


def test_the_end_of_run_summary_reads_a_run_being_written(tmp_path):
    from fedamole.engines.summary import summarize_run

    path = _fake_run(tmp_path, "s1", _config("fedamole", 1), {(1, 0): 0.5}, done=False)
    with (path / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 2, "client": 0, "spl')
    assert summarize_run(path).last[0]["score"] == 0.5


def test_predictions_records_of_a_half_written_file_are_read(tmp_path):
    from fedamole.rundir import read_predictions

    path = tmp_path / "predictions.jsonl"
    record = {"round": 1, "client": 0, "split": "test", "example": 0, "score": 1.0}
    path.write_text(json.dumps(record) + "\n" + '{"round": 1, "cli')
    assert read_predictions(path) == {1: {0: [record]}}


def test_report_and_plot_of_a_file_exit_2_naming_it(tmp_path):
    from typer.testing import CliRunner

    from fedamole.cli import app

    _two_seeds(tmp_path)
    target = str(tmp_path / "s1" / "metrics.jsonl")
    for args in (["report", target], ["plot", "rounds", target, "--out", str(tmp_path / "f")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "is a file, not a run directory" in result.output
        assert "Traceback" not in result.output


def test_a_plot_of_a_sweep_with_a_broken_run_draws_the_others(tmp_path, caplog):
    pytest.importorskip("matplotlib")
    from fedamole.analysis.plots import plot

    _two_seeds(tmp_path / "runs")
    (tmp_path / "runs" / "s2" / "metrics.jsonl").write_text("{oops\n{}\n")
    paths = plot("rounds", [tmp_path / "runs"], tmp_path / "figures")
    assert paths and all(path.exists() for path in paths)
    assert "left out the run" in caplog.text and "s2" in caplog.text
