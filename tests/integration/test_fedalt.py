"""FedALT end to end on the smoke config: what travels (docs/algorithm.md#fedalt), each client's
rest of world is the mean of the others' individual adapters, resume after a kill equals an
uninterrupted run, and the export (both adapters and the mixers) computes as the client's model."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.fedalt import ROW_ADAPTER, set_mixer_state
from fedamole.algorithms.lora_common import set_lora_state
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
            "federation.algorithm": "fedalt",
            "federation.rounds": 3,
            "data.test_cap": 2,
            "data.eval_cap": 2,
            "eval.max_new_tokens": 2,
        }
    )


@pytest.fixture(scope="module")
def run(cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "fedalt"
    run_embedded(cfg, path, progress=False)
    return path


def test_what_travels_and_the_rest_of_world_rule(run, cfg):
    state = load_checkpoint(run / "checkpoints")
    one_adapter = sum(t.numel() * 4 for t in state["server"]["global"].values())
    sent: dict[tuple[int, str], int] = {}
    for rec in read_jsonl(run / "comm.jsonl"):
        key = (rec["round"], rec["direction"])
        sent[key] = sent.get(key, 0) + rec["bytes"]
    rounds, n = cfg.federation.rounds, cfg.federation.num_clients
    expected = {(r, "up"): n * one_adapter for r in range(1, rounds + 1)}
    expected |= {(r, "down"): n * one_adapter for r in range(2, rounds + 1)}  # nothing in round 1
    assert {k: v for k, v in sent.items() if v} == expected
    clients, uploads = state["clients"], state["server"]["uploads"]
    for c in range(n):  # the last round's rest of world: the others' round-(R-1) uploads
        assert set(clients[c]) >= {"lora", "lora_row", "mixer", "stream"}
        assert torch.equal(
            uploads[c]["lora_B:model.layers.0.self_attn.q_proj"],
            clients[c]["lora"]["lora_B:model.layers.0.self_attn.q_proj"],
        )
        assert clients[c]["mixer"]["mixer:model.layers.0.self_attn.q_proj"].any()  # trained


def test_resume_after_a_kill_equals_the_uninterrupted_run(run, cfg, tmp_path):
    run_killed(cfg, tmp_path / "resumed", kill_round=3)
    run_embedded(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert result_records(tmp_path / "resumed") == result_records(run)
    for name in ("comm.jsonl", "predictions.jsonl"):
        assert (tmp_path / "resumed" / name).read_text() == (run / name).read_text(), name


def test_export_loads_back_as_the_clients_model(run, cfg, tmp_path):
    out = export_client(run, 2, tmp_path / "export")
    client = load_checkpoint(run / "checkpoints")["clients"][2]
    engine, _ = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    engine = get_algorithm("fedalt")(cfg).prepare_model(engine).eval()
    set_lora_state(engine, client["lora"])
    set_lora_state(engine, client["lora_row"], ROW_ADAPTER)
    set_mixer_state(engine, client["mixer"])
    loaded, _ = load_exported(out, device="cpu")
    with torch.no_grad():
        expected = engine(input_ids=IDS).logits
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)
