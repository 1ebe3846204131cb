"""pFedMoE end to end on the smoke config: only the shared expert travels (FedIT's bytes), the last
server state is the mean of the clients' shared experts, resume after a kill equals an
uninterrupted run, and the export (both experts and the gates) computes as the client's model."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.fedalt import set_mixer_state
from fedamole.algorithms.lora_common import set_lora_state
from fedamole.algorithms.pfedmoe import LOCAL_EXPERT
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
            "federation.algorithm": "pfedmoe",
            "federation.rounds": 3,
            "data.test_cap": 2,
            "data.eval_cap": 2,
            "eval.max_new_tokens": 2,
        }
    )


@pytest.fixture(scope="module")
def run(cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "pfedmoe"
    run_embedded(cfg, path, progress=False)
    return path


def test_only_the_shared_expert_travels_and_is_averaged(run, cfg):
    state = load_checkpoint(run / "checkpoints")
    server, clients = state["server"]["global"], state["clients"]
    expert = sum(t.numel() * 4 for t in server.values())
    sent: dict[tuple[int, str], int] = {}
    for rec in read_jsonl(run / "comm.jsonl"):
        key = (rec["round"], rec["direction"])
        sent[key] = sent.get(key, 0) + rec["bytes"]
    rounds, n = cfg.federation.rounds, cfg.federation.num_clients
    expected = {(0, "down"): n * expert}  # the initial broadcast (round 0 tests the init)
    expected |= {(r, "up"): n * expert for r in range(1, rounds + 1)}
    expected |= {(r, "down"): n * expert for r in range(2, rounds + 1)}
    assert {k: v for k, v in sent.items() if v} == expected
    for key, value in server.items():  # the last aggregation: the mean of the shared experts
        mean = torch.stack([clients[c]["lora"][key] for c in sorted(clients)]).mean(0)
        torch.testing.assert_close(value, mean, rtol=0, atol=1e-7)
    for client in clients.values():
        assert {"lora", "lora_local", "gate", "stream"} <= set(client)


def test_resume_after_a_kill_equals_the_uninterrupted_run(run, cfg, tmp_path):
    run_killed(cfg, tmp_path / "resumed", kill_round=3)
    run_embedded(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert result_records(tmp_path / "resumed") == result_records(run)
    for name in ("comm.jsonl", "predictions.jsonl"):
        assert (tmp_path / "resumed" / name).read_text() == (run / name).read_text(), name


def test_export_loads_back_as_the_clients_model(run, cfg, tmp_path):
    out = export_client(run, 1, tmp_path / "export")
    client = load_checkpoint(run / "checkpoints")["clients"][1]
    engine, _ = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    engine = get_algorithm("pfedmoe")(cfg).prepare_model(engine).eval()
    set_lora_state(engine, client["lora"])
    set_lora_state(engine, client["lora_local"], LOCAL_EXPERT)
    set_mixer_state(engine, client["gate"])
    loaded, _ = load_exported(out, device="cpu")
    with torch.no_grad():
        expected = engine(input_ids=IDS).logits
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)
