"""Experiment tracking: per-step training records in metrics.jsonl, the record hooks
(``fedamole.run(on_record=...)``, ``run.hooks``) and the TensorBoard mirror
(``run.tensorboard``)."""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict

import pytest
from typer.testing import CliRunner

import fedamole
from fedamole.config import ConfigError, differing_fields
from fedamole.federated.messages import ClientMessage, split_step_key, step_key
from fedamole.rundir import (
    HookError,
    JsonlLogger,
    RecordHooks,
    check_hooks,
    load_hook,
    read_jsonl,
    tensorboard_folder,
    tensorboard_step,
    tensorboard_tag,
)
from fedamole.training import round_lr

HERE = "tests.unit.test_tracking_hooks"
RECEIVED: list[dict] = []  # what the `run.hooks` entry `collect` was given


def collect(record: dict) -> None:
    """A ``run.hooks`` entry: keeps every record."""
    RECEIVED.append(record)


def broken(record: dict) -> None:
    """A ``run.hooks`` entry that always fails: the run must go on without it."""
    raise RuntimeError("this hook is broken")


NOT_CALLABLE = 42

STEPS, ROUNDS = 2, 2
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None  # the `dev` extra has it


@pytest.fixture(scope="module")
def tracked(smoke, tmp_path_factory):
    """One smoke run (FedAMoLE, 2 rounds of 2 steps) with TensorBoard, two ``run.hooks`` (one of
    them broken) and ``on_record``."""
    out = tmp_path_factory.mktemp("tracked")
    RECEIVED.clear()
    given: list[dict] = []
    tensorboard = {"run__tensorboard": str(out / "tb")} if HAVE_TENSORBOARD else {}
    result = fedamole.run(
        smoke,
        run_dir=out / "run",
        on_record=given.append,
        train__steps=STEPS,
        federation__rounds=ROUNDS,
        eval__test_init=False,
        run__hooks=[f"{HERE}:collect", f"{HERE}:broken"],
        **tensorboard,
    )
    return result, out / "run", tensorboard_folder(out / "tb", out / "run"), given, list(RECEIVED)


def _step_records(records, metric):
    """(round, client) -> {step: value} of a per-step metric."""
    out: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
    for r in records:
        if r["split"] == "train" and r["metric"] == metric:
            out[r["round"], r["client"]][r["step"]] = r["value"]
    return out


def test_metrics_jsonl_has_the_loss_tokens_and_lr_of_every_step(tracked, smoke):
    result, run_dir, *_ = tracked
    assert result.failures == 0 and (run_dir / "done.json").exists()
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    n = smoke.federation.num_clients
    losses = _step_records(records, "step_loss")
    tokens = _step_records(records, "step_tokens")
    lrs = _step_records(records, "step_lr")
    keys = {(rnd, c) for rnd in range(1, ROUNDS + 1) for c in range(n)}
    assert set(losses) == set(tokens) == set(lrs) == keys
    for key in keys:
        assert sorted(losses[key]) == sorted(tokens[key]) == list(range(1, STEPS + 1))
        assert all(
            v == round_lr(smoke.train.lr, smoke.train.lr_decay, key[0]) for v in lrs[key].values()
        )
    stepped = [r for r in records if "step" in r]
    assert len(stepped) == 3 * ROUNDS * n * STEPS
    assert {r["metric"] for r in stepped} == {"step_loss", "step_tokens", "step_lr"}
    # the round's train/loss is the token-weighted mean of its step losses
    for r in records:
        if r["split"] == "train" and r["metric"] in ("loss", "tokens") and "step" not in r:
            key = r["round"], r["client"]
            steps = tokens[key]
            if r["metric"] == "tokens":
                assert r["value"] == sum(steps.values())
            else:
                mean = sum(losses[key][s] * steps[s] for s in steps) / sum(steps.values())
                assert r["value"] == pytest.approx(mean, rel=1e-12)


def test_step_records_follow_their_rounds_records_in_step_order(tracked):
    _, run_dir, *_ = tracked
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    client = [r for r in records if (r["round"], r["client"]) == (1, 0)]
    names = [(r["split"], r["metric"], r.get("step")) for r in client]
    assert names == sorted(names, key=lambda x: (x[0], x[1], x[2] or 0))
    assert [s for _, m, s in names if m == "step_loss"] == list(range(1, STEPS + 1))


def test_every_hook_receives_every_record_as_written(tracked):
    _, run_dir, _, given, received = tracked
    written = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert given == written  # fedamole.run(on_record=...)
    assert received == written  # run.hooks, beside a broken hook, which is only logged
    assert (
        "record hook tests.unit.test_tracking_hooks:broken failed"
        in (run_dir / "log.txt").read_text()
    )


def test_tensorboard_mirrors_every_record(tracked, smoke):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    _, run_dir, tb_dir, *_ = tracked
    assert list(tb_dir.glob("events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert tags == {tensorboard_tag(r) for r in records}
    assert {"client0/test/score", "client2/train/step_loss", "server/round_seconds"} <= tags
    assert "server/rsea/retention" in tags
    for tag in ("client1/train/step_loss", "client1/test/score"):
        expected = [
            (tensorboard_step(r, STEPS), r["value"]) for r in records if tensorboard_tag(r) == tag
        ]
        events = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in events] == [s for s, _ in expected]
        assert [v for _, v in events] == pytest.approx([v for _, v in expected], rel=1e-6)
    steps = [e.step for e in acc.Scalars("client1/train/step_loss")]
    assert steps == list(range(1, ROUNDS * STEPS + 1))  # (round - 1) * steps + step


def test_step_keys_round_trip():
    assert step_key("train/step_loss", 12) == "train/step_loss@12"
    assert split_step_key("train/step_loss@12") == ("train/step_loss", 12)
    assert split_step_key("train/local_step_lr@2") == ("train/local_step_lr", 2)
    for key in ("train/loss", "a@b", "@3", "x@", "x@3.5", "x@²", "test/acc@5", "step_x/acc@5"):
        assert split_step_key(key) == (key, None)


def test_step_metrics_are_logged_as_records_with_a_step(tmp_path):
    from fedamole.engines.common import _log_metrics

    metrics = {"train/step_loss@10": 1.0, "train/step_loss@2": 2.0, "train/loss": 1.5}
    metrics |= {"received/score": 0.5}
    logger = JsonlLogger(tmp_path / "m.jsonl")
    _log_metrics(logger, 3, 1, ClientMessage(3, 1, metrics=metrics))
    logger.close()
    assert list(read_jsonl(tmp_path / "m.jsonl")) == [
        {"client": 1, "metric": "score", "round": 2, "split": "test_global", "value": 0.5},
        {"client": 1, "metric": "loss", "round": 3, "split": "train", "value": 1.5},
        {"client": 1, "metric": "step_loss", "round": 3, "split": "train", "step": 2, "value": 2.0},
        {
            "client": 1,
            "metric": "step_loss",
            "round": 3,
            "split": "train",
            "step": 10,
            "value": 1.0,
        },
    ]


def test_tensorboard_tags_and_steps():
    rec = {"round": 3, "client": 2, "split": "test", "metric": "score", "value": 1.0}
    assert (tensorboard_tag(rec), tensorboard_step(rec, 50)) == ("client2/test/score", 3)
    step = {"round": 3, "client": 2, "split": "train", "metric": "step_loss", "step": 4}
    assert (tensorboard_tag(step), tensorboard_step(step, 50)) == ("client2/train/step_loss", 104)
    server = {"round": 1, "client": -1, "split": "server", "metric": "rsea/retention"}
    assert tensorboard_tag(server) == "server/rsea/retention"
    rejected = {"round": 1, "client": 4, "split": "server", "metric": "rejected"}
    assert tensorboard_tag(rejected) == "server/rejected/client4"


def test_a_bad_hook_path_is_a_clear_error_before_anything_starts(smoke, tmp_path):
    with pytest.raises(HookError, match=r"`run\.hooks` entry 'no_such_module_xyz:log'.*PYTHONPATH"):
        fedamole.run(smoke, run_dir=tmp_path / "r", run__hooks=["no_such_module_xyz:log"])
    assert not (tmp_path / "r").exists()
    with pytest.raises(HookError, match="has no attribute 'nope'"):
        load_hook(f"{HERE}:nope")
    with pytest.raises(HookError, match="not callable"):
        load_hook(f"{HERE}:NOT_CALLABLE")
    assert load_hook(f"{HERE}:collect") is collect
    with pytest.raises(ConfigError, match=r"`run\.hooks`.*'package\.module:function'"):
        fedamole.load_config(smoke, run__hooks=["no_colon"])
    assert fedamole.load_config(smoke, run__hooks=[]).run.hooks is None  # [] is unset
    with pytest.raises(TypeError, match="on_record must be a callable"):
        fedamole.run(smoke, run_dir=tmp_path / "r", on_record="print")


def test_cli_reports_a_bad_hook_and_sets_tensorboard(repo, tmp_path, monkeypatch):
    from fedamole import engines
    from fedamole.cli import app

    smoke_toml = str(repo / "configs" / "smoke.toml")
    runner = CliRunner()
    bad = runner.invoke(
        app, ["run", smoke_toml, "run.hooks=['no_such_module_xyz:f']", "--run-dir", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "run.hooks" in bad.output and "no_such_module_xyz" in bad.output
    seen = []
    monkeypatch.setattr(engines, "run_experiment", lambda cfg, *a, **k: seen.append(cfg))
    folder = tmp_path / "tb dir"
    done = runner.invoke(
        app, ["run", smoke_toml, "--run-dir", str(tmp_path), "--tensorboard", str(folder)]
    )
    assert done.exit_code == 0, done.output
    assert seen[0].run.tensorboard == str(folder)


def test_missing_tensorboard_names_the_field_and_the_fix(smoke, monkeypatch):
    cfg = smoke.replace(**{"run.tensorboard": "tb"})
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(
        HookError, match=r"`run\.tensorboard` = 'tb'.*pip install 'fedamole\[tensorboard\]'"
    ):
        check_hooks(cfg)


def test_tracking_fields_never_block_a_resume(smoke):
    other = smoke.replace(**{"run.tensorboard": "tb", "run.hooks": [f"{HERE}:collect"]})
    assert differing_fields(smoke, other) == []
    assert differing_fields(smoke, other.replace(**{"train.lr": 0.5})) == ["train.lr"]
    assert "tensorboard" not in smoke.to_dict()["run"] and "hooks" not in smoke.to_dict()["run"]


def test_a_failing_hook_is_logged_once_and_the_others_still_run(caplog):
    got = []
    hooks = RecordHooks([("bad", broken), ("good", got.append)])
    for i in range(3):
        hooks({"round": i})
    hooks.close()
    assert got == [{"round": 0}, {"round": 1}, {"round": 2}]
    assert caplog.text.count("record hook bad failed (") == 1
    assert "record hook bad failed on 3 records" in caplog.text


def test_round_records_are_unchanged_by_tracking(tracked):
    """Nothing but the added records: the per-round records keep their keys (no ``step``)."""
    _, run_dir, *_ = tracked
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    plain = [r for r in records if "step" not in r]
    assert all(set(r) == {"round", "client", "split", "metric", "value"} for r in plain)
    assert all(r["metric"].startswith("step_") for r in records if "step" in r)


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="needs tensorboard (the `dev` extra)")
def test_a_killed_run_resumes_with_tensorboard_added(smoke, tmp_path):
    from tests.conftest import run_killed

    cfg = smoke.replace(**{"train.steps": 1, "eval.test_init": False})
    run_killed(cfg, tmp_path / "r", kill_round=2)
    given: list[dict] = []
    tb = tmp_path / "tb"
    fedamole.run(
        cfg, run_dir=tmp_path / "r", resume=True, on_record=given.append, run__tensorboard=str(tb)
    )
    assert (tmp_path / "r" / "done.json").exists()
    assert {r["round"] for r in given} == {2}  # hooks see what is written from the resume on
    assert list(tensorboard_folder(tb, tmp_path / "r").glob("events.out.tfevents.*"))
    assert "tensorboard" not in (tmp_path / "r" / "config.toml").read_text()


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if tag != "server/round_seconds"  # wall-clock time: differs between any two runs
    }


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="needs tensorboard (the `dev` extra)")
def test_a_run_killed_mid_round_shows_each_point_once_after_resume(smoke, tmp_path):
    """The mirror is rebuilt from metrics.jsonl on resume: the points written before the kill in
    the round that is played again do not show twice."""
    cfg = smoke.replace(**{"train.steps": 3, "federation.rounds": 3, "eval.test_init": False})
    fedamole.run(cfg, run_dir=tmp_path / "whole", run__tensorboard=str(tmp_path / "tb"))
    seen = {"n": 0}

    def kill_in_round_2(record: dict) -> None:
        seen["n"] += record["round"] == 2
        if seen["n"] == 20:
            raise KeyboardInterrupt  # not an Exception: stops the run as a kill would

    with pytest.raises(KeyboardInterrupt):
        fedamole.run(
            cfg,
            run_dir=tmp_path / "killed",
            on_record=kill_in_round_2,
            run__tensorboard=str(tmp_path / "tb"),
        )
    fedamole.run(
        cfg, run_dir=tmp_path / "killed", resume=True, run__tensorboard=str(tmp_path / "tb")
    )
    whole = _scalars(tensorboard_folder(tmp_path / "tb", tmp_path / "whole"))
    resumed = _scalars(tensorboard_folder(tmp_path / "tb", tmp_path / "killed"))
    assert resumed.keys() == whole.keys()
    for tag, points in whole.items():
        assert [s for s, _ in resumed[tag]] == [s for s, _ in points], tag  # each step once
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in points], rel=1e-6)


def test_reports_skip_the_step_records_without_losing_any_other(tracked):
    from fedamole.analysis.results import load_runs

    _, run_dir, *_ = tracked
    (run,) = load_runs([run_dir])
    every = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert run.metrics == [r for r in every if "step" not in r]
    assert run.step_metrics == [r for r in every if "step" in r]
    assert run.step_metrics and len(run.metrics) + len(run.step_metrics) == len(every)


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="needs tensorboard (the `dev` extra)")
def test_an_unwritable_tensorboard_folder_is_a_clear_error(smoke, tmp_path):
    blocker = tmp_path / "tb"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(HookError, match=r"`run\.tensorboard` = .*cannot write TensorBoard files"):
        fedamole.run(smoke, run_dir=tmp_path / "run", run__tensorboard=str(blocker))


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="needs tensorboard (the `dev` extra)")
def test_two_runs_of_one_name_never_delete_each_others_events(smoke, tmp_path):
    """The same grid point in two sweeps: run directories ``a/smoke`` and ``b/smoke`` mirror into
    one ``--tensorboard DIR``; starting (or resuming) one leaves the other's event files alone,
    and a resume clears only the event files its own run wrote."""
    from fedamole.rundir import RunLayout, open_hooks

    cfg = smoke.replace(**{"run.tensorboard": str(tmp_path / "tb")})
    record = {"client": 0, "metric": "score", "round": 1, "split": "test", "value": 0.5}
    runs = [RunLayout(tmp_path / sweep / "smoke") for sweep in ("a", "b")]
    folders = [tensorboard_folder(cfg.run.tensorboard, run.path) for run in runs]
    assert folders[0] != folders[1] and all(f.name.startswith("smoke-") for f in folders)
    for run in runs:
        hooks = open_hooks(cfg, run)
        hooks(dict(record))
        hooks.close()
    first = sorted(folders[0].glob("events.out.tfevents.*"))
    assert first and sorted(folders[1].glob("events.out.tfevents.*"))
    foreign = folders[0] / "events.out.tfevents.0.someone-else"
    foreign.write_bytes(b"")
    hooks = open_hooks(cfg, runs[0])  # a resume of a/smoke: its own events are rebuilt
    hooks.close()
    assert not any(path.exists() for path in first)
    assert foreign.exists()
    assert sorted(folders[1].glob("events.out.tfevents.*"))
