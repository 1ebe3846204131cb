"""FlexLoRA and HetLoRA end to end on the smoke config (3 clients of ranks 2, 5 and 3): what
travels equals the formulas of docs/algorithm.md#flexlora and #hetlora, the components beyond a
client's rank stay zero, HetLoRA's ranks shrink, resume after a kill equals an uninterrupted run,
and the export computes as the client's model."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.lora_common import set_lora_state
from fedamole.algorithms.lora_ranks import rank_scaling
from fedamole.engines.embedded import run_embedded
from fedamole.export import MANIFEST, export_client
from fedamole.models import load_model_and_tokenizer
from fedamole.rundir import load_checkpoint, read_jsonl
from tests.conftest import result_records, run_killed

RANKS = (2, 5, 3)
IDS = torch.tensor([[0, 40, 41, 42, 10, 77, 120, 31, 9]])


@pytest.fixture(scope="module")
def cfg(smoke):
    return smoke.replace(
        **{
            "federation.algorithm": "flexlora",
            "baselines.ranks.values": list(RANKS),
            "data.test_cap": 2,
            "data.eval_cap": 2,
            "eval.max_new_tokens": 2,
        }
    )


@pytest.fixture(scope="module")
def run(cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "flexlora"
    run_embedded(cfg, path, progress=False)
    return path


def test_bytes_on_the_wire_equal_the_formula(run, cfg):
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    modules = [
        m for name, m in model.named_modules() if name.endswith(cfg.baselines.target_modules)
    ]
    per_rank = 4 * sum(m.in_features + m.out_features for m in modules)  # float32 A and B
    sent: dict[tuple[int, int, str], int] = {}
    for rec in read_jsonl(run / "comm.jsonl"):
        key = (rec["round"], rec["client"], rec["direction"])
        sent[key] = sent.get(key, 0) + rec["bytes"]
    rounds = cfg.federation.rounds
    # down: the initial adapter (round 0), then every round after an aggregation (2..R); round 1
    # holds round 0's unchanged init. up: every training round.
    expected = {(0, c, "down"): RANKS[c] * per_rank for c in range(3)}
    expected |= {
        (r, c, "down"): RANKS[c] * per_rank for r in range(2, rounds + 1) for c in range(3)
    }
    expected |= {(r, c, "up"): RANKS[c] * per_rank for r in range(1, rounds + 1) for c in range(3)}
    assert {k: v for k, v in sent.items() if v} == expected


def test_components_beyond_a_clients_rank_stay_zero(run):
    clients = load_checkpoint(run / "checkpoints")["clients"]
    for c, rank in enumerate(RANKS):
        for key, value in clients[c]["lora"].items():
            extra = value[rank:] if key.startswith("lora_A") else value[:, rank:]
            own = value[:rank] if key.startswith("lora_A") else value[:, :rank]
            assert not extra.any(), (c, key)
            assert own.any(), (c, key)


def test_resume_after_a_kill_equals_the_uninterrupted_run(run, cfg, tmp_path):
    run_killed(cfg, tmp_path / "resumed", kill_round=2)
    run_embedded(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert result_records(tmp_path / "resumed") == result_records(run)
    for name in ("comm.jsonl", "predictions.jsonl"):
        assert (tmp_path / "resumed" / name).read_text() == (run / name).read_text(), name


def test_export_is_the_clients_own_rank_adapter(run, cfg, tmp_path):
    out = export_client(run, 1, tmp_path / "export")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == RANKS[1] and config["lora_alpha"] == cfg.baselines.lora_alpha
    assert json.loads((out / MANIFEST).read_text())["flexlora"] == {"rank": RANKS[1]}
    client = load_checkpoint(run / "checkpoints")["clients"][1]
    engine, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    engine = get_algorithm("flexlora")(cfg).prepare_model(engine)
    set_lora_state(engine, client["lora"])
    engine.eval()
    base, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    exported = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad(), rank_scaling(engine, RANKS[1]):
        expected = engine(input_ids=IDS).logits
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# HetLoRA: the same clients, a regularizer strong enough that ranks shrink within 3 rounds.


@pytest.fixture(scope="module")
def het_cfg(cfg):
    return cfg.replace(
        **{
            "federation.algorithm": "hetlora",
            "federation.rounds": 3,
            "baselines.hetlora.reg_lambda": 1.0,
            "baselines.hetlora.prune_gamma": 0.5,
        }
    )


@pytest.fixture(scope="module")
def het_run(het_cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "hetlora"
    run_embedded(het_cfg, path, progress=False)
    return path


def _ranks(path) -> dict[tuple[int, int], int]:
    return {
        (r["round"], r["client"]): int(r["value"])
        for r in result_records(path)
        if r["split"] == "train" and r["metric"] == "rank"
    }


def test_hetlora_ranks_shrink_and_what_travels_follows_them(het_run, het_cfg):
    ranks = _ranks(het_run)
    assert any(ranks[3, c] < RANKS[c] for c in range(3))  # some client pruned
    assert all(ranks[r + 1, c] <= ranks[r, c] for r in (1, 2) for c in range(3))
    model, _ = load_model_and_tokenizer(het_cfg.model.name, dtype="float32", device="cpu", seed=0)
    targets = het_cfg.baselines.target_modules
    modules = [m for name, m in model.named_modules() if name.endswith(targets)]
    per_rank = 4 * sum(m.in_features + m.out_features for m in modules)
    up: dict[tuple[int, int], int] = {}
    for rec in read_jsonl(het_run / "comm.jsonl"):
        if rec["direction"] == "up":
            key = (rec["round"], rec["client"])
            up[key] = up.get(key, 0) + rec["bytes"]
    assert up == {key: rank * per_rank for key, rank in ranks.items()}  # the rank after pruning
    clients = load_checkpoint(het_run / "checkpoints")["clients"]
    for c in range(3):
        rank = clients[c]["rank"] if "rank" in clients[c] else RANKS[c]
        assert rank == ranks[3, c]
        for key, value in clients[c]["lora"].items():
            extra = value[rank:] if key.startswith("lora_A") else value[:, rank:]
            assert not extra.any(), (c, key)


def test_hetlora_resume_after_a_kill_equals_the_uninterrupted_run(het_run, het_cfg, tmp_path):
    run_killed(het_cfg, tmp_path / "resumed", kill_round=3)
    run_embedded(het_cfg, tmp_path / "resumed", resume=True, progress=False)
    assert result_records(tmp_path / "resumed") == result_records(het_run)
    for name in ("comm.jsonl", "predictions.jsonl"):
        assert (tmp_path / "resumed" / name).read_text() == (het_run / name).read_text(), name


def test_hetlora_export_scales_as_the_client_did(het_run, het_cfg, tmp_path):
    client = 0
    out = export_client(het_run, client, tmp_path / "export")
    state = load_checkpoint(het_run / "checkpoints")["clients"][client]
    rank = _ranks(het_run)[3, client]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == rank
    assert config["lora_alpha"] == pytest.approx(het_cfg.baselines.lora_alpha * rank / max(RANKS))
    engine, _ = load_model_and_tokenizer(het_cfg.model.name, dtype="float32", device="cpu", seed=0)
    engine = get_algorithm("hetlora")(het_cfg).prepare_model(engine).eval()
    set_lora_state(engine, state["lora"])
    base, _ = load_model_and_tokenizer(het_cfg.model.name, dtype="float32", device="cpu", seed=0)
    exported = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=IDS).logits, engine(input_ids=IDS).logits, rtol=0, atol=1e-5
        )
