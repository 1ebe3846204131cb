"""FedLEASE end to end on the smoke config: what travels per phase (the byte formula of
docs/algorithm.md#fedlease), the clustering happens once and the clients train their own cluster's
expert, resume after a kill equals an uninterrupted run, and the export (the M experts and the
routers) computes as the client's model."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.fedlease import load_client_model
from fedamole.engines.embedded import run_embedded
from fedamole.export import export_client, load_exported
from fedamole.models import load_model_and_tokenizer
from fedamole.rundir import load_checkpoint, read_jsonl
from tests.conftest import result_records, run_killed

IDS = torch.tensor([[0, 40, 41, 42, 10, 77, 120, 31, 9]])


@pytest.fixture(scope="module")
def cfg(smoke):
    return smoke.replace(
        **{
            "federation.algorithm": "fedlease",
            "federation.rounds": 3,
            "data.test_cap": 2,
            "data.eval_cap": 2,
            "eval.max_new_tokens": 2,
        }
    )


@pytest.fixture(scope="module")
def run(cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "fedlease"
    run_embedded(cfg, path, progress=False)
    return path


def _bytes(state):
    return sum(t.numel() * t.element_size() for t in state.values())


def test_what_travels_follows_the_byte_formula(run, cfg):
    server = load_checkpoint(run / "checkpoints")["server"]
    m = len(server["experts"])
    assert m == 2  # K_max = min(N - 1, M_max) = min(2, 4): the only candidate
    expert, router = _bytes(server["experts"][0]), _bytes(server["routers"][0])
    d_in = sum(v.shape[1] for v in server["routers"][0].values())
    assert router == 4 * (2 * m - 1) * d_in  # (2M-1, d_in) float32 per module
    sent: dict[tuple[int, str], int] = {}
    for rec in read_jsonl(run / "comm.jsonl"):
        key = (rec["round"], rec["direction"])
        sent[key] = sent.get(key, 0) + rec["bytes"]
    n, w, rounds = cfg.federation.num_clients, cfg.baselines.fedlease.warmup_rounds, 3
    expected = {(w, "up"): n * expert}  # the warm-up: only round W's upload
    for r in range(w + 1, rounds + 1):
        expected[(r, "down")] = n * (m * expert + router)
        expected[(r, "up")] = n * (expert + router)
    assert {k: v for k, v in sent.items() if v} == expected


def test_the_last_server_experts_are_the_means_of_the_clients_own(run, cfg):
    state = load_checkpoint(run / "checkpoints")
    server, clients = state["server"], state["clients"]
    assert server["clusters"] == [clients[c]["cluster"] for c in sorted(clients)]
    m = len(server["experts"])
    for k in range(m):
        members = [c for c in sorted(clients) if clients[c]["cluster"] == k]
        assert members  # every cluster has a client
        name = "lora" if k == 0 else f"lora_expert{k}"
        for key, value in server["experts"][k].items():
            mean = torch.stack([clients[c][name][key] for c in members]).mean(0)
            torch.testing.assert_close(value, mean, rtol=0, atol=1e-7)
        for key, value in server["routers"][k].items():
            mean = torch.stack([clients[c]["router"][key] for c in members]).mean(0)
            torch.testing.assert_close(value, mean, rtol=0, atol=1e-7)
    for client in clients.values():
        assert client["num_experts"] == m
        assert {"lora", *(f"lora_expert{k}" for k in range(1, m)), "router"} <= set(client)


def test_resume_after_a_kill_equals_the_uninterrupted_run(run, cfg, tmp_path):
    """Killed after the clustering: the resumed server holds the clusters, experts and routers."""
    run_killed(cfg, tmp_path / "resumed", kill_round=3)
    run_embedded(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert result_records(tmp_path / "resumed") == result_records(run)
    for name in ("comm.jsonl", "predictions.jsonl"):
        assert (tmp_path / "resumed" / name).read_text() == (run / name).read_text(), name


def test_resume_before_the_clustering_equals_the_uninterrupted_run(cfg, tmp_path):
    """A 2-round warm-up killed in round 2: the resumed run clusters as the uninterrupted one."""
    cfg = cfg.replace(**{"baselines.fedlease.warmup_rounds": 2})
    run_embedded(cfg, tmp_path / "whole", progress=False)
    run_killed(cfg, tmp_path / "resumed", kill_round=2)
    run_embedded(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert result_records(tmp_path / "resumed") == result_records(tmp_path / "whole")
    for name in ("comm.jsonl", "predictions.jsonl"):
        whole = (tmp_path / "whole" / name).read_text()
        assert (tmp_path / "resumed" / name).read_text() == whole, name
    server = load_checkpoint(tmp_path / "resumed" / "checkpoints")["server"]
    assert len(server["clusters"]) == cfg.federation.num_clients


def test_export_loads_back_as_the_clients_model(run, cfg, tmp_path):
    out = export_client(run, 2, tmp_path / "export")
    client = load_checkpoint(run / "checkpoints")["clients"][2]
    engine, _ = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    algo = get_algorithm("fedlease")(cfg)
    engine = algo.prepare_model(engine).eval()
    load_client_model(engine, client, len(algo.adapters))
    loaded, _ = load_exported(out, device="cpu")
    with torch.no_grad():
        expected = engine(input_ids=IDS).logits
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)
        # the routers matter: expert 0 alone differs
        load_client_model(engine, {**client, "num_experts": 0}, len(algo.adapters))
        assert not torch.allclose(engine(input_ids=IDS).logits, expected, atol=1e-6)
