"""The run directory's records and rules: the one fold of metrics.jsonl, a file followed as it
grows, the format version, and the one rule for resuming with a config."""

from __future__ import annotations

import json

import pytest

from fedamole.config import Config
from fedamole.rundir import (
    FORMAT_VERSION,
    JsonlTail,
    RunDir,
    RunDirError,
    config_mismatch,
    fold,
    metric_record,
)


def test_fold_keeps_one_split_and_metric_the_later_record_winning():
    records = [
        metric_record(1, 0, "test", "score", 0.25),
        metric_record(1, 1, "test", "score", 0.5),
        metric_record(1, 0, "test", "loss", 9.0),
        metric_record(1, 0, "test_global", "score", 9.0),
        metric_record(1, 0, "train", "step_loss", 9.0, step=2),
        metric_record(2, 0, "test", "score", 1),
        metric_record(1, 0, "test", "score", 0.75),  # a replayed round after a resume
    ]
    assert fold(records, "test", "score") == {1: {0: 0.75, 1: 0.5}, 2: {0: 1.0}}
    assert fold([], "test", "score") == {}
    into = {0: {0: 0.1}}
    assert fold(records[:1], "test", "score", into=into) is into
    assert into == {0: {0: 0.1}, 1: {0: 0.25}}


def test_tail_reads_appended_complete_lines_once(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert tail.read() == [{"a": 1}, {"a": 2}]
    assert tail.read() == []
    with path.open("a") as fh:
        fh.write(": 3}\n")
    assert tail.read() == [{"a": 3}]


def test_new_runs_name_their_format_and_old_ones_read_as_version_1(tmp_path):
    run = RunDir.prepare(Config(), tmp_path / "r")
    run.release()
    assert json.loads(run.env.read_text())["format"] == FORMAT_VERSION == run.format_version
    env = json.loads(run.env.read_text())
    del env["format"]  # a run directory written before the field existed
    run.env.write_text(json.dumps(env))
    assert run.format_version == 1
    run.env.write_text(json.dumps({**env, "format": FORMAT_VERSION + 1}))
    with pytest.raises(RunDirError, match="newer fedamole"):
        RunDir.prepare(Config(), run.path, resume=True)


def test_config_mismatch_names_the_fields_and_ignores_tracking():
    cfg = Config()
    assert config_mismatch(cfg, cfg) is None
    assert config_mismatch(cfg, cfg.replace(**{"run.hooks": ["m:f"]})) is None
    other = cfg.replace(**{"train.lr": 0.5, "run.seed": 7})
    mismatch = config_mismatch(cfg.to_dict(), other)
    assert mismatch is not None and mismatch.fields == ("run.seed", "train.lr")
    assert str(mismatch) == "differs in run.seed, train.lr"
