"""FedAMoLE end to end on the smoke config: files, resume, failures, rejected updates, bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedamole.engines.embedded import run_embedded
from fedamole.rundir import read_jsonl
from tests.conftest import result_records, run_killed


@pytest.fixture(scope="module")
def full_run(smoke, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "full"
    result = run_embedded(smoke, path, progress=False)
    return path, result


def _metrics(path):
    return [
        (r["round"], r["client"], r["split"], r["metric"], r["value"]) for r in result_records(path)
    ]


def test_run_writes_every_file(full_run, smoke):
    path, result = full_run
    for name in ("config.toml", "env.json", "metrics.jsonl", "comm.jsonl", "log.txt"):
        assert (path / name).is_file(), name
    assert (path / "checkpoints" / "last" / "tensors.safetensors").is_file()
    rounds = smoke.federation.rounds
    for rnd in range(rounds + 1):
        record = json.loads((path / "assignments" / f"round_{rnd:03d}.json").read_text())
        assert record
    metrics = _metrics(path)
    assert {m[0] for m in metrics} == set(range(rounds + 1))
    assert {m[1] for m in metrics if m[2] != "server"} == set(range(smoke.federation.num_clients))
    assert {m[3] for m in metrics if m[2] == "server"} >= {"rsea/retention", "rsea/group_purity"}
    assert any(m[2] == "test" and m[3] == "score" for m in metrics)
    assert any(m[2] == "train" and m[3] == "loss" and m[0] == 1 for m in metrics)
    assert result.failures == 0 and result.last
    timing = [r for r in read_jsonl(path / "metrics.jsonl") if r["metric"] == "round_seconds"]
    assert [(r["round"], r["client"], r["split"]) for r in timing] == [
        (rnd, -1, "server") for rnd in range(rounds + 1)
    ]
    assert all(r["value"] > 0 for r in timing)
    assert json.loads((path / "done.json").read_text()) == {"last_round": rounds}


def test_resume_after_kill_equals_uninterrupted(full_run, smoke, tmp_path, monkeypatch):
    path, _ = full_run
    run_killed(smoke, tmp_path / "r", kill_round=2)
    run_embedded(smoke, tmp_path / "r", resume=True, progress=False)
    assert _metrics(tmp_path / "r") == _metrics(path)
    for rnd in range(smoke.federation.rounds + 1):
        name = f"round_{rnd:03d}.json"
        assert (tmp_path / "r" / "assignments" / name).read_text() == (
            path / "assignments" / name
        ).read_text()


def test_resume_with_another_config_is_refused(full_run, smoke, tmp_path):
    from fedamole.rundir import CheckpointError

    run_embedded(smoke.replace(**{"federation.rounds": 1}), tmp_path / "r", progress=False)
    other = smoke.replace(**{"federation.rounds": 1, "train.lr": 0.5})
    with pytest.raises(CheckpointError, match="train.lr"):
        run_embedded(other, tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / "metrics.jsonl").stat().st_size > 0


def test_injected_client_failure_does_not_stop_the_run(smoke, tmp_path):
    cfg = smoke.replace(**{"federation.fail_clients": [[1, 2]]})
    result = run_embedded(cfg, tmp_path / "r", progress=False)
    assert result.failures == 1
    metrics = _metrics(tmp_path / "r")
    assert not [m for m in metrics if m[0] == 1 and m[1] == 2]
    assert [m for m in metrics if m[0] == 2 and m[1] == 2]
    assert "client 2 failed" in (tmp_path / "r" / "log.txt").read_text()


def test_comm_matches_the_byte_formula(full_run, smoke):
    """docs/algorithm.md#communication: down = b*sum_m[(n+1)*r*(d_in+d_out) + r*d_in]; up adds
    the embeddings, (n+1)*r per module here (we do not send the shared expert's zero placeholder
    row)."""
    path, _ = full_run
    r, b = smoke.mole.rank, 4  # fp32 adapters
    d = {"q_proj": (32, 32), "v_proj": (32, 16)}  # tiny llama: hidden 32, 2 KV heads of 8
    comm = list(read_jsonl(path / "comm.jsonl"))
    for rnd in range(1, smoke.federation.rounds + 1):
        assignment = json.loads((path / "assignments" / f"round_{rnd - 1:03d}.json").read_text())
        for client in range(smoke.federation.num_clients):
            held = {m: len(per_client[client]) for m, per_client in assignment["modules"].items()}
            weights = sum(
                (n + 1) * r * sum(d[m.rsplit(".", 1)[-1]]) + r * d[m.rsplit(".", 1)[-1]][0]
                for m, n in held.items()
            )
            emb = sum((n + 1) * r for n in held.values())
            recs = [c for c in comm if c["round"] == rnd and c["client"] == client]
            up = sum(c["bytes"] for c in recs if c["direction"] == "up" and c["kind"] != "ids")
            down = sum(c["bytes"] for c in recs if c["direction"] == "down" and c["kind"] != "ids")
            if rnd < smoke.federation.rounds:
                assert up == b * (weights + emb)
            else:
                assert up == 0  # nothing is aggregated after the last round
            if rnd == 1:
                assert down == 0  # round 0 already delivered the weights
            else:
                assert down == b * weights


def test_nan_update_is_rejected_and_not_averaged(smoke):
    from fedamole.algorithms.fedamole import FedAMoLE
    from fedamole.federated.messages import ClientMessage, pack_modules
    from fedamole.models import load_model_and_tokenizer

    cfg = smoke.replace(**{"federation.rounds": 3})
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu")
    algo = FedAMoLE(cfg)
    algo.prepare_model(model)
    algo.setup(model)
    before = next(iter(algo.bank.modules.values())).token_proj.clone()
    updates = {}
    for c in range(cfg.federation.num_clients):
        tensors = pack_modules(algo._client_modules(c))
        tensors = {k: v + 1.0 if v.is_floating_point() else v for k, v in tensors.items()}
        if c == 0:
            key = next(k for k in tensors if k.startswith("experts:"))
            tensors[key] = tensors[key].clone()
            tensors[key].view(-1)[0] = float("nan")
        updates[c] = ClientMessage(1, c, tensors, {"num_examples": 10}, {})
    summary = algo.aggregate(1, updates)
    assert 0 in summary.rejected and "NaN/Inf" in summary.rejected[0]
    assert set(summary.accepted) == {1, 2}
    bank = next(iter(algo.bank.modules.values()))
    torch.testing.assert_close(bank.token_proj, before + 1.0)
    assert all(torch.isfinite(t).all() for t in (bank.lora_A, bank.lora_B, bank.token_proj))
    assert np.all([a.sum(1).min() >= 2 for a in algo.assignment.modules.values()])


def _algo(cfg):
    from fedamole.algorithms.fedamole import FedAMoLE
    from fedamole.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu")
    algo = FedAMoLE(cfg)
    algo.setup(algo.prepare_model(model))
    return algo


def _constant_updates(algo, cfg):
    """Client c uploads its assigned module states with every float tensor equal to c + 1 and
    10 * (c + 1) training examples."""
    from fedamole.federated.messages import ClientMessage, pack_modules

    updates = {}
    for c in range(cfg.federation.num_clients):
        tensors = pack_modules(algo._client_modules(c))
        tensors = {
            k: torch.full_like(v, c + 1.0) if v.is_floating_point() else v
            for k, v in tensors.items()
        }
        updates[c] = ClientMessage(1, c, tensors, {"num_examples": 10 * (c + 1)}, {})
    return updates


def test_aggregation_matches_hand_computed_means(smoke):
    """Each domain expert over its holders only; shared expert and token projection over all."""

    cfg = smoke.replace(**{"federation.rounds": 3, "federation.assignment": "static"})
    algo = _algo(cfg)
    name = next(iter(algo.bank.modules))
    matrix = algo.assignment.modules[name]
    holders = {e: np.flatnonzero(matrix[e]) for e in range(cfg.mole.num_experts)}
    summary = algo.aggregate(1, _constant_updates(algo, cfg))
    assert summary.accepted == (0, 1, 2) and not summary.rejected
    bank = algo.bank.modules[name]
    assert torch.all(bank.token_proj == 2.0)  # mean of 1, 2, 3
    assert torch.all(bank.shared_A == 2.0) and torch.all(bank.shared_B == 2.0)
    for e, clients in holders.items():
        expected = float(np.mean(clients + 1.0))
        assert torch.all(bank.lora_A[e] == expected), (e, clients)
        assert torch.all(bank.lora_B[e] == expected)


def test_example_weighted_aggregation(smoke):

    cfg = smoke.replace(
        **{
            "federation.rounds": 3,
            "federation.weighting": "examples",
            "federation.assignment": "static",
        }
    )
    algo = _algo(cfg)
    algo.aggregate(1, _constant_updates(algo, cfg))
    bank = next(iter(algo.bank.modules.values()))
    # weights 10, 20, 30 on values 1, 2, 3: (10 + 40 + 90) / 60
    torch.testing.assert_close(bank.token_proj, torch.full_like(bank.token_proj, 140 / 60))


def test_misshapen_or_mistyped_update_is_rejected(smoke):
    from fedamole.federated.messages import ClientMessage, pack_modules

    cfg = smoke.replace(**{"federation.rounds": 3, "federation.assignment": "static"})
    algo = _algo(cfg)
    updates = {}
    for c in range(cfg.federation.num_clients):
        tensors = pack_modules(algo._client_modules(c))
        key = next(k for k in tensors if k.startswith("token_proj:"))
        if c == 1:
            tensors[key] = tensors[key][:, :-1]
        if c == 2:
            tensors[key] = tensors[key].double()
        updates[c] = ClientMessage(1, c, tensors, {"num_examples": 1}, {})
    summary = algo.aggregate(1, updates)
    assert summary.accepted == (0,)
    assert "shape" in summary.rejected[1] and "dtype" in summary.rejected[2]
