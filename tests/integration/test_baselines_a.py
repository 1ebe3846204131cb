"""The LoRA baselines end to end on the smoke config: run directories, what travels, evaluation
timing, export (peft and MoLE) and resume."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.feddpa import instance_weights, mixture
from fedamole.algorithms.lora_common import adapter_scales, initial_lora_state, set_lora_state
from fedamole.data import load_federated_data
from fedamole.data.prompts import alpaca_prompt
from fedamole.data.types import Example
from fedamole.engines.embedded import run_embedded
from fedamole.evaluation import generate_responses
from fedamole.export import (
    FEDDPA_DIRECTION,
    MANIFEST,
    MOLE_STATE,
    export_client,
    generate,
    load_exported,
)
from fedamole.federated.messages import unpack_modules
from fedamole.models import load_model_and_tokenizer
from fedamole.mole import set_mole_state
from fedamole.rundir import load_checkpoint, read_jsonl
from tests.conftest import result_records, run_killed

ALGORITHMS = ("local", "fedit", "ffa_lora", "fedsa_lora", "feddpa")
TIMING = {"fedit": "both"}  # FedIT also covers eval.timing = "both"
FAST = {
    "train.steps": 2,
    "data.test_cap": 2,
    "data.eval_cap": 2,
    "eval.max_new_tokens": 2,
}
IDS = torch.tensor([[0, 40, 41, 42, 10, 77, 120, 31, 9]])


@pytest.fixture(scope="module")
def configs(smoke):
    def cfg(name: str):
        timing = TIMING.get(name, "personalized")
        return smoke.replace(**{"federation.algorithm": name, "eval.timing": timing, **FAST})

    return cfg


@pytest.fixture(scope="module")
def runs(configs, tmp_path_factory):
    """``runs(name)``: the run directory of a finished 2-round run (run once per module)."""
    done = {}

    def get(name: str):
        if name not in done:
            path = tmp_path_factory.mktemp("runs") / name
            run_embedded(configs(name), path, progress=False)
            done[name] = path
        return done[name]

    return get


def _metrics(path):
    return [
        (r["round"], r["client"], r["split"], r["metric"], r["value"]) for r in result_records(path)
    ]


def _comm(path):
    return list(read_jsonl(path / "comm.jsonl"))


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _engine_model(cfg, client_state):
    """The client's model as the engine had it: a fresh backbone, the algorithm's adapters, the
    client's checkpointed adapter state."""
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    model = get_algorithm(cfg.federation.algorithm)(cfg).prepare_model(model)
    set_lora_state(model, client_state["lora"])
    return model, tokenizer


@pytest.mark.parametrize("name", ALGORITHMS)
def test_two_rounds_write_the_run_directory(runs, configs, name):
    path, cfg = runs(name), configs(name)
    for file in ("config.toml", "env.json", "metrics.jsonl", "comm.jsonl", "log.txt"):
        assert (path / file).is_file(), file
    assert (path / "checkpoints" / "last" / "tensors.safetensors").is_file()
    metrics = _metrics(path)
    test = {(m[0], m[1]) for m in metrics if m[2] == "test" and m[3] == "score"}
    assert test == {(r, c) for r in (0, 1, 2) for c in range(cfg.federation.num_clients)}
    assert {m[0] for m in metrics if m[2] == "train" and m[3] == "loss"} == {1, 2}
    assert " failed: " not in (path / "log.txt").read_text()  # no client raised
    state = load_checkpoint(path / "checkpoints")
    assert state["round"] == (3 if name == "fedit" else 2)
    assert all("lora" in state["clients"][c] for c in range(cfg.federation.num_clients))


def test_timing_both_logs_personalized_and_global_splits(runs):
    metrics = _metrics(runs("fedit"))
    rounds = {
        split: {m[0] for m in metrics if m[2] == split and m[3] == "score"}
        for split in ("test", "test_global")
    }
    assert rounds == {"test": {0, 1, 2}, "test_global": {0, 1, 2}}
    # round 0: both evaluate the initial model, the same weights
    for client in range(3):
        got = {
            m[2]: m[4]
            for m in metrics
            if m[0] == 0 and m[1] == client and m[3] == "loss" and m[2] in ("test", "test_global")
        }
        assert got["test"] == pytest.approx(got["test_global"], rel=1e-6)


def test_fedit_uploads_whole_adapters_every_training_round(runs):
    comm = _comm(runs("fedit"))
    up = {(c["round"], c["kind"]) for c in comm if c["direction"] == "up" and c["bytes"] > 0}
    assert up == {(r, k) for r in (1, 2) for k in ("lora_A", "lora_B")}
    down = {(c["round"], c["kind"]) for c in comm if c["direction"] == "down" and c["bytes"] > 0}
    assert down == {(r, k) for r in (0, 2, 3) for k in ("lora_A", "lora_B")}  # init, then after
    # every aggregation (round 1 holds round 0's unchanged init)


def test_ffa_lora_never_changes_A(runs, configs):
    cfg, state = configs("ffa_lora"), load_checkpoint(runs("ffa_lora") / "checkpoints")
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    model = get_algorithm("ffa_lora")(cfg).prepare_model(model)
    init = initial_lora_state(model, generator=torch.Generator().manual_seed(cfg.run.seed))
    holders = [state["server"]["global"]] + [state["clients"][c]["lora"] for c in range(3)]
    for key in (k for k in init if k.startswith("lora_A")):
        assert all(torch.equal(h[key], init[key]) for h in holders), key
    assert all(
        state["clients"][0]["lora"][k].abs().sum() > 0 for k in init if k.startswith("lora_B")
    )
    sent = {(c["round"], c["client"], c["direction"], c["kind"]) for c in _comm(runs("ffa_lora"))}
    per_client = {
        (0, "down", "lora_A"),  # round 0: the initial broadcast, A and the zero B
        (0, "down", "lora_B"),
        (1, "up", "lora_B"),  # then only B: uploaded after training (rounds 1 and 2), sent
        (2, "up", "lora_B"),  # down after round 1's aggregation; round 1 receives nothing
        (2, "down", "lora_B"),  # (nothing has been aggregated yet)
    }
    clients = range(cfg.federation.num_clients)
    assert sent == {(r, c, d, k) for r, d, k in per_client for c in clients}


def test_fedsa_lora_never_sends_B(runs):
    path = runs("fedsa_lora")
    for rec in _comm(path):
        if rec["kind"] == "lora_B":
            assert (rec["round"], rec["direction"]) == (0, "down"), rec  # the initial broadcast
    assert any(
        r["kind"] == "lora_A" and r["direction"] == "up" and r["bytes"] > 0 for r in _comm(path)
    )
    state = load_checkpoint(path / "checkpoints")
    key = "lora_B:model.layers.0.self_attn.q_proj"
    bs = [state["clients"][c]["lora"][key] for c in range(3)]
    assert not torch.equal(bs[0], bs[1]) and not torch.equal(bs[1], bs[2])  # personal B
    assert not state["server"]["global"][key].any()  # the server's B is the untouched zero init
    a_key = "lora_A:model.layers.0.self_attn.q_proj"
    mean_a = torch.stack([state["clients"][c]["lora"][a_key] for c in range(3)]).mean(0)
    torch.testing.assert_close(state["server"]["global"][a_key], mean_a)  # round 2's average


def test_local_only_sends_nothing(runs):
    path = runs("local")
    assert (path / "comm.jsonl").is_file()
    assert _comm(path) == []  # no message carries a tensor, so no kind is ever logged
    state = load_checkpoint(path / "checkpoints")
    key = "lora_B:model.layers.1.self_attn.v_proj"
    assert not torch.equal(state["clients"][0]["lora"][key], state["clients"][1]["lora"][key])


def test_feddpa_sends_one_adapter_and_keeps_the_local_one(runs):
    path = runs("feddpa")
    kinds = {rec["kind"] for rec in _comm(path) if rec["bytes"] > 0}
    assert kinds == {"lora_A", "lora_B"}
    sizes = {(r["round"], r["direction"]): 0 for r in _comm(path)}
    for rec in _comm(path):
        sizes[rec["round"], rec["direction"]] += rec["bytes"]
    state = load_checkpoint(path / "checkpoints")
    one_adapter = 3 * sum(t.numel() * 4 for t in state["server"]["global"].values())
    assert sizes[1, "up"] == sizes[2, "up"] == sizes[0, "down"] == one_adapter
    assert set(state["clients"][0]) >= {"lora", "lora_local", "stream"}
    weights = [m[4] for m in _metrics(path) if m[2] == "test" and m[3] == "mix_weight"]
    assert weights and all(0 <= w <= 0.5 for w in weights)


def test_exported_fedit_adapter_reproduces_the_client_model(runs, configs, tmp_path):
    path, cfg = runs("fedit"), configs("fedit")
    out = export_client(path, 1, tmp_path / "export")
    assert {"adapter_config.json", "adapter_model.safetensors", MANIFEST} <= {
        p.name for p in out.iterdir()
    }
    state = load_checkpoint(path / "checkpoints")
    expected = _logits(_engine_model(cfg, state["clients"][1])[0])
    base, _ = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    peft_model = PeftModel.from_pretrained(base, out)
    assert peft_model.peft_config["default"].base_model_name_or_path == cfg.model.name
    torch.testing.assert_close(_logits(peft_model), expected, rtol=0, atol=1e-5)
    base, _ = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    assert not torch.allclose(_logits(base), expected, atol=1e-5)  # the adapter matters


def test_feddpa_export_mixes_like_the_engine(runs, configs, tmp_path):
    path, cfg = runs("feddpa"), configs("feddpa")
    out = export_client(path, 0, tmp_path / "export")
    assert {"adapter_config.json", "local", FEDDPA_DIRECTION} <= {p.name for p in out.iterdir()}
    client = load_checkpoint(path / "checkpoints")["clients"][0]
    model, tokenizer = _engine_model(cfg, client)
    set_lora_state(model, client["lora_local"], "local")
    ctx = ClientContext(0, load_federated_data(cfg).clients[0], model, tokenizer)
    prompt = Example(prompt=alpaca_prompt("Name a colour."), response="", category="")
    (weight,) = instance_weights(ctx, cfg, [prompt])
    assert 0 < weight <= 0.5
    with adapter_scales(model, mixture(weight)):
        expected_logits = _logits(model)
        (expected,) = generate_responses(
            model, tokenizer, [prompt], batch_size=1, max_new_tokens=6, max_length=512
        )
    loaded, _ = load_exported(out, device="cpu")
    with adapter_scales(loaded, mixture(weight)):
        torch.testing.assert_close(_logits(loaded), expected_logits, rtol=0, atol=1e-5)
    assert generate(out, "Name a colour.", max_new_tokens=6) == expected


def test_export_refuses_a_non_empty_folder_and_unknown_clients(runs, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_client(runs("local"), 0, tmp_path / "taken")
    with pytest.raises(ValueError, match="client 7"):
        export_client(runs("local"), 7, tmp_path / "new")


def test_fedamole_export_round_trips(smoke, tmp_path):
    cfg = smoke.replace(**FAST)
    run_embedded(cfg, tmp_path / "run", progress=False)
    out = export_client(tmp_path / "run", 2, tmp_path / "export")
    assert (out / MOLE_STATE).is_file() and (out / MANIFEST).is_file()
    client = load_checkpoint(tmp_path / "run" / "checkpoints")["clients"][2]
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    model = get_algorithm("fedamole")(cfg).prepare_model(model)
    set_mole_state(model, unpack_modules(client["modules"]))
    loaded, _ = load_exported(out, device="cpu")
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)
    prompt = Example(prompt=alpaca_prompt("Name a colour."), response="", category="")
    expected = generate_responses(
        model, tokenizer, [prompt], batch_size=1, max_new_tokens=6, max_length=512
    )
    assert generate(out, "Name a colour.", max_new_tokens=6) == expected[0]


def test_resume_after_kill_equals_uninterrupted(runs, configs, tmp_path, monkeypatch):
    full, cfg = runs("fedit"), configs("fedit")
    run_killed(cfg, tmp_path / "r", kill_round=2)
    run_embedded(cfg, tmp_path / "r", resume=True, progress=False)
    assert _metrics(tmp_path / "r") == _metrics(full)
    assert _comm(tmp_path / "r") == _comm(full)
    resumed = load_checkpoint(tmp_path / "r" / "checkpoints")
    uninterrupted = load_checkpoint(full / "checkpoints")
    for c in range(3):
        for key, value in uninterrupted["clients"][c]["lora"].items():
            assert torch.equal(resumed["clients"][c]["lora"][key], value), (c, key)
