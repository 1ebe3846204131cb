"""Failed runs never look finished, diverged clients are failures, and a kill in the middle of a
round leaves nothing that resume would duplicate."""

from __future__ import annotations

import math

import pytest

import fedamole.engines.embedded as embedded
from fedamole.engines.common import RunFailedError
from fedamole.engines.embedded import run_embedded
from tests.conftest import result_records


def test_a_round_where_every_client_fails_stops_the_run_unfinished(smoke, tmp_path):
    cfg = smoke.replace(**{"federation.fail_clients": [[1, c] for c in range(3)]})
    with pytest.raises(RunFailedError, match="round 1: every client failed") as failed:
        run_embedded(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "done.json").exists()
    assert (tmp_path / "r" / "checkpoints" / "last").is_dir()  # round 0 stays resumable
    assert "Round 0 is saved" in str(failed.value) and "--resume" in str(failed.value)


def test_the_advice_after_every_client_failed_works(smoke, tmp_path, monkeypatch):
    """A cause outside the config, removed: --resume finishes the run as if it never failed. No
    round saved: the message offers no resume, and starting again (--overwrite) works."""
    run_embedded(smoke, tmp_path / "full", progress=False)
    real = embedded.check_injected_failure

    def out_of_memory_in(rnd_failing):
        def check(cfg_, rnd, client):
            if rnd == rnd_failing:
                raise MemoryError("simulated: out of memory")
            real(cfg_, rnd, client)

        return check

    monkeypatch.setattr(embedded, "check_injected_failure", out_of_memory_in(1))
    with pytest.raises(RunFailedError, match="Round 0 is saved.*--resume"):
        run_embedded(smoke, tmp_path / "r", progress=False)
    monkeypatch.setattr(embedded, "check_injected_failure", real)
    run_embedded(smoke, tmp_path / "r", resume=True, progress=False)
    assert result_records(tmp_path / "r") == result_records(tmp_path / "full")

    monkeypatch.setattr(embedded, "check_injected_failure", out_of_memory_in(0))
    with pytest.raises(RunFailedError, match="No round was saved") as failed:
        run_embedded(smoke, tmp_path / "r0", progress=False)
    assert "--resume" not in str(failed.value) and "--overwrite" in str(failed.value)
    monkeypatch.setattr(embedded, "check_injected_failure", real)
    run_embedded(smoke, tmp_path / "r0", overwrite=True, progress=False)
    assert result_records(tmp_path / "r0") == result_records(tmp_path / "full")


def test_diverged_training_everywhere_stops_the_run(smoke, tmp_path, caplog):
    # FedAMoLE: at lr 1e30 its routing logits overflow and the loss goes NaN. (A LoRA method's
    # tiny model no longer does: it went NaN only because the CPU flash-attention kernel
    # overflows; the float32 attention of training stays finite on the ruined model,
    # docs/results/performance.md.)
    cfg = smoke.replace(**{"train.lr": 1e30, "federation.algorithm": "fedamole"})
    with pytest.raises(RunFailedError):
        run_embedded(cfg, tmp_path / "r", progress=False)
    assert "training loss is nan" in caplog.text
    assert [r for r in result_records(tmp_path / "r") if r["round"] >= 1] == []
    assert not (tmp_path / "r" / "done.json").exists()


def test_a_non_finite_metric_makes_that_client_fail_the_round(smoke, tmp_path, monkeypatch, caplog):
    import fedamole.algorithms.lora_strategy as strategy

    real = strategy.evaluate_test

    def nan_for_client_1(ctx, cfg):
        out = real(ctx, cfg)
        return {**out, "score": float("nan")} if ctx.client_id == 1 else out

    monkeypatch.setattr(strategy, "evaluate_test", nan_for_client_1)
    cfg = smoke.replace(**{"federation.algorithm": "fedit"})
    result = run_embedded(cfg, tmp_path / "r", progress=False)
    records = result_records(tmp_path / "r")
    assert all(math.isfinite(r["value"]) for r in records)
    assert {r["client"] for r in records if r["split"] == "test"} == {0, 2}
    assert "client 1 failed: non-finite test/score" in caplog.text
    assert result.failures == cfg.federation.rounds + 1  # rounds 0..R
    assert (tmp_path / "r" / "done.json").exists()  # the others finished the run


def test_a_kill_mid_round_leaves_no_duplicate_after_resume(smoke, tmp_path, monkeypatch):
    """With eval.timing=both, round 2's received-model metrics are logged as round 1: a kill after
    client 0 reported them must not leave them twice once the round is replayed."""
    cfg = smoke.replace(**{"federation.algorithm": "fedit", "eval.timing": "both"})
    run_embedded(cfg, tmp_path / "full", progress=False)
    real = embedded.check_injected_failure

    def kill(cfg_, rnd, client):
        if (rnd, client) == (2, 1):
            raise KeyboardInterrupt("simulated kill in the middle of round 2")
        real(cfg_, rnd, client)

    monkeypatch.setattr(embedded, "check_injected_failure", kill)
    with pytest.raises(KeyboardInterrupt):
        run_embedded(cfg, tmp_path / "resumed", progress=False)
    partial = result_records(tmp_path / "resumed")
    assert any(r["round"] == 1 and r["split"] == "test_global" for r in partial)
    monkeypatch.setattr(embedded, "check_injected_failure", real)
    run_embedded(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert result_records(tmp_path / "resumed") == result_records(tmp_path / "full")


def test_resume_drops_a_half_written_last_line_and_refuses_without_metrics(smoke, tmp_path):
    from fedamole.rundir import CheckpointError
    from tests.conftest import run_killed

    run_embedded(smoke, tmp_path / "full", progress=False)
    run_killed(smoke, tmp_path / "r", kill_round=2)
    with (tmp_path / "r" / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 2, "client": 0, "spl')  # killed while writing a record
    run_embedded(smoke, tmp_path / "r", resume=True, progress=False)
    assert result_records(tmp_path / "r") == result_records(tmp_path / "full")

    run_killed(smoke, tmp_path / "gone", kill_round=2)
    (tmp_path / "gone" / "metrics.jsonl").unlink()
    with pytest.raises(CheckpointError, match="metrics.jsonl is missing"):
        run_embedded(smoke, tmp_path / "gone", resume=True, progress=False)
    assert not (tmp_path / "gone" / "metrics.jsonl").exists()  # nothing half-written


@pytest.mark.parametrize("algorithm", ["fedamole", "ffa_lora", "fedsa_lora"])
def test_a_client_that_missed_round_0_gets_what_it_needs_in_round_1(smoke, tmp_path, algorithm):
    """Round 0 carries the initial experts (FedAMoLE) or adapter (the LoRA baselines); a client
    that failed then is sent them again instead of failing every later round."""
    cfg = smoke.replace(**{"federation.algorithm": algorithm, "federation.fail_clients": [[0, 1]]})
    result = run_embedded(cfg, tmp_path / "r", progress=False)
    assert result.failures == 1
    trained = {(r["round"], r["client"]) for r in result_records(tmp_path / "r")}
    assert (0, 1) not in trained and (1, 1) in trained and (2, 1) in trained


def test_the_summary_compares_the_same_clients_and_names_who_failed(smoke, tmp_path):
    from fedamole.engines.summary import format_summary

    cfg = smoke.replace(**{"federation.fail_clients": [[2, 1]]})  # client 1 fails the last round
    result = run_embedded(cfg, tmp_path / "r", progress=False)
    text = format_summary(result)
    assert "client   1: " in text and "no result in the last round (failed)" in text
    mean_line = next(line for line in text.splitlines() if "mean" in line)
    assert mean_line.endswith("(clients [0, 2])") and "nan" not in mean_line
    first, last = result.first, result.last
    expected = sum(last[c]["score"] for c in (0, 2)) / 2
    assert f"-> {expected:.4f}" in mean_line and set(first) == {0, 1, 2}


def test_an_unwritable_run_directory_is_a_clean_error(repo, tmp_path):
    from typer.testing import CliRunner

    from fedamole.cli import app

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(
        app, ["run", str(repo / "configs" / "smoke.toml"), "--run-dir", str(blocker / "run")]
    )
    assert result.exit_code == 2
    assert "cannot create the run directory" in result.output and "--run-dir" in result.output
    assert "Traceback" not in result.output


def test_a_full_disk_mid_run_stops_cleanly_and_resume_finishes_it(
    repo, smoke, tmp_path, monkeypatch
):
    """ENOSPC while checkpointing round 1: exit 1 with a message naming the cause and the resume
    command; round 0's checkpoint is intact and --resume gives the uninterrupted run's logs."""
    import errno

    from typer.testing import CliRunner

    import fedamole.engines.common as common
    from fedamole.cli import app

    reference = tmp_path / "reference"
    run_embedded(smoke, reference, progress=False)
    original = common.save_checkpoint
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # round 1's checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
        return original(*args, **kwargs)

    def full_disk_at_first(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(common, "save_checkpoint", full_disk)
    config, run_dir = str(repo / "configs" / "smoke.toml"), tmp_path / "run"
    result = CliRunner().invoke(app, ["run", config, "--run-dir", str(run_dir)])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "--resume" in result.output
    assert not (run_dir / "done.json").exists()
    monkeypatch.setattr(common, "save_checkpoint", original)
    resumed = CliRunner().invoke(app, ["run", config, "--run-dir", str(run_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert result_records(run_dir) == result_records(reference)

    # the disk full at the first checkpoint: no round saved, so no resume is offered
    calls.clear()
    monkeypatch.setattr(common, "save_checkpoint", full_disk_at_first)
    first = tmp_path / "first"
    result = CliRunner().invoke(app, ["run", config, "--run-dir", str(first)])
    assert result.exit_code == 1, result.output
    assert "--resume" not in result.output and "no round was saved" in result.output
    monkeypatch.setattr(common, "save_checkpoint", original)
    again = result.output.split("start again with: fedamole run ")[1].split()
    assert again == [config, "--run-dir", str(first), "--overwrite"]
    assert CliRunner().invoke(app, ["run", *again]).exit_code == 0
    assert result_records(first) == result_records(reference)
