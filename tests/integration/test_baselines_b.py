"""FDLoRA, FedPrompt and FedPTuning end to end on the smoke config: run directory, evaluation
timing, fusion rounds, resume after a kill equals an uninterrupted run."""

from __future__ import annotations

import pytest

from fedamole.engines.embedded import run_embedded
from fedamole.rundir import read_jsonl
from tests.conftest import result_records, run_killed

SMALL = {
    "data.test_cap": 4,
    "data.eval_cap": 4,
    "eval.max_new_tokens": 4,
    "baselines.fdlora.fusion_budget": 3,
    "baselines.fdlora.fusion_batches": 1,
    "baselines.prompt_tokens": 4,
    "baselines.prompt_encoder_hidden": 16,
}


@pytest.fixture(scope="module")
def small_smoke(smoke):
    return smoke.replace(**SMALL)


def _records(path, name="metrics.jsonl"):
    records = result_records(path) if name == "metrics.jsonl" else read_jsonl(path / name)
    return [tuple(sorted(r.items())) for r in records]


def _split(path, split):
    return [r for r in read_jsonl(path / "metrics.jsonl") if r["split"] == split]


@pytest.mark.parametrize(
    ("algorithm", "timing"),
    [("fdlora", "global"), ("fedprompt", "personalized"), ("fedptuning", "both")],
)
def test_two_rounds_write_the_run_directory(small_smoke, tmp_path, algorithm, timing):
    cfg = small_smoke.replace(**{"federation.algorithm": algorithm, "eval.timing": timing})
    result = run_embedded(cfg, tmp_path / "r", progress=False)
    path = tmp_path / "r"
    for name in ("config.toml", "env.json", "metrics.jsonl", "comm.jsonl", "log.txt"):
        assert (path / name).is_file(), name
    assert (path / "checkpoints" / "last" / "tensors.safetensors").is_file()
    assert result.failures == 0
    clients = set(range(cfg.federation.num_clients))
    scores = {(r["round"], r["client"]) for r in _split(path, "test") if r["metric"] == "score"}
    received = {
        (r["round"], r["client"]) for r in _split(path, "test_global") if r["metric"] == "score"
    }
    rounds = {0, 1, 2}
    assert scores == ({(r, c) for r in rounds for c in clients} if timing != "global" else set())
    assert received == (
        {(r, c) for r in rounds for c in clients} if timing != "personalized" else set()
    )
    train = {r["round"] for r in _split(path, "train") if r["metric"] == "loss"}
    assert train == {1, 2}
    up = {r["round"] for r in read_jsonl(path / "comm.jsonl") if r["direction"] == "up"}
    assert up == {1, 2}  # every training round is aggregated, the last included


def _kill_and_resume(cfg, path, kill_round, monkeypatch):
    run_killed(cfg, path, kill_round=kill_round)
    run_embedded(cfg, path, resume=True, progress=False)


@pytest.mark.parametrize(
    ("algorithm", "overrides", "kill_round"),
    [
        # the kill falls after a sync (private adapter) and an outer step (momentum buffer)
        (
            "fdlora",
            {"baselines.fdlora.sync_every": 2, "federation.rounds": 3, "eval.timing": "both"},
            3,
        ),
        # the relayed MLP must restore the shared model's MLP
        ("fedptuning", {"baselines.ptuning.reference_quirk": True}, 2),
    ],
)
def test_resume_after_kill_equals_uninterrupted(
    small_smoke, tmp_path, monkeypatch, algorithm, overrides, kill_round
):
    cfg = small_smoke.replace(**{"federation.algorithm": algorithm, **overrides})
    run_embedded(cfg, tmp_path / "full", progress=False)
    _kill_and_resume(cfg, tmp_path / "resumed", kill_round, monkeypatch)
    for name in ("metrics.jsonl", "comm.jsonl"):
        assert _records(tmp_path / "resumed", name) == _records(tmp_path / "full", name)
    if algorithm == "fdlora":  # fusion needs the private adapter, first synced in round 2
        fusion = _split(tmp_path / "full", "fusion")
        assert {(r["round"], r["metric"].split("_")[0]) for r in fusion} == {
            (2, "local"),
            (3, "local"),
            (3, "received"),
            (4, "received"),
        }
        assert all(-1.5 <= r["value"] <= 1.5 for r in fusion if r["metric"][-3:-1] == "_w")
