"""checkpoints/best and `fedamole export --round best|last|N` on the smoke config: the best
checkpoint is the round the report names (also after a resume), every export loads back as the
model the client was scored with (logits to 1e-5, and the logged score), PEFT exports of a
local-folder backbone load with AutoPeftModelForCausalLM, FDLoRA and the prompt methods export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel
from typer.testing import CliRunner

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.fdlora import fuse
from fedamole.algorithms.lora_common import select_parts, set_lora_state
from fedamole.algorithms.prompt_tuning import PROMPT_KIND, prompt_encoder, tensors_of_kind
from fedamole.algorithms.virtual_tokens import VirtualTokenLM
from fedamole.analysis.results import entries, load_runs
from fedamole.cli import app
from fedamole.data import load_federated_data
from fedamole.engines import best, common
from fedamole.engines.embedded import run_embedded
from fedamole.evaluation import evaluate_examples
from fedamole.export import MANIFEST, README, export_client, load_exported
from fedamole.federated.messages import unpack_modules
from fedamole.models import load_model_and_tokenizer, tiny_causal_lm, tiny_tokenizer
from fedamole.mole import set_mole_state
from fedamole.rundir import (
    CheckpointError,
    checkpoint_info,
    checkpoint_rounds,
    load_checkpoint,
    read_jsonl,
)
from tests.conftest import run_killed

FAST = {
    "train.steps": 2,
    "data.test_cap": 2,
    "data.eval_cap": 2,
    "eval.max_new_tokens": 2,
    "eval.test_init": False,
    "federation.rounds": 3,
}
# two rows, the second left-padded (pad id 2): logits are compared on the real tokens
IDS = torch.tensor([[0, 40, 41, 42, 10, 77, 120, 31, 9], [2, 2, 2, 0, 50, 51, 52, 53, 54]])
MASK = torch.tensor([[1] * 9, [0, 0, 0, 1, 1, 1, 1, 1, 1]])
runner = CliRunner()


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=MASK).logits
    return logits[MASK.bool()]


def _manifest(out) -> dict:
    return json.loads((out / MANIFEST).read_text())


def _lora_model(cfg, adapter):
    """A fresh backbone with the algorithm's LoRA adapter set to ``adapter``."""
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    model = get_algorithm(cfg.federation.algorithm)(cfg).prepare_model(model)
    set_lora_state(model, adapter)
    return model


def _logged(path, rnd: int, client: int, split: str) -> float:
    (value,) = [
        r["value"]
        for r in read_jsonl(path / "metrics.jsonl")
        if (r["round"], r["client"], r["split"], r["metric"]) == (rnd, client, split, "score")
    ]
    return value


def _rescored(cfg, model, tokenizer, client: int) -> float:
    """The client's test score of ``model``, evaluated as the engine evaluates."""
    test = load_federated_data(cfg).clients[client].test
    return evaluate_examples(model, tokenizer, test, cfg.eval, max_length=cfg.model.max_length)[
        "score"
    ]


def _assert_same_state(a, b, where="state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def mole_run(smoke, tmp_path_factory):
    """A 3-round FedAMoLE run, with a copy of the checkpoint of every round beside it."""
    cfg = smoke.replace(**FAST)
    root = tmp_path_factory.mktemp("mole")
    path, rounds = root / "run", root / "rounds"
    save = common.save_checkpoint

    def keep_every_round(folder, state, name="last"):
        final = save(folder, state, name)
        shutil.copytree(final, rounds / f"round_{state['round']}")
        return final

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "save_checkpoint", keep_every_round)
        run_embedded(cfg, path, progress=False)
    return cfg, path, rounds


# ------------------------------------------------------------------------------------------------
# checkpoints/best


def test_best_checkpoint_is_the_round_the_report_names(mole_run):
    cfg, path, rounds = mole_run
    (entry,) = entries(load_runs([path]))
    rnd, value = entry.value("best")
    info = checkpoint_info(path / "checkpoints", "best")
    assert info["round"] == rnd
    assert info["selection"] == {
        "rule": "best",
        "round": rnd,
        "split": entry.split,
        "metric": "score",
        "value": pytest.approx(value),
    }
    _assert_same_state(
        load_checkpoint(path / "checkpoints", "best"), load_checkpoint(rounds, f"round_{rnd}")
    )
    assert checkpoint_info(path / "checkpoints")["round"] == cfg.federation.rounds


def test_resumed_run_keeps_the_same_best(mole_run, tmp_path):
    cfg, full, _ = mole_run
    run_killed(cfg, tmp_path / "r", kill_round=2)
    run_embedded(cfg, tmp_path / "r", resume=True, progress=False)
    assert checkpoint_info(tmp_path / "r" / "checkpoints", "best") == checkpoint_info(
        full / "checkpoints", "best"
    )
    _assert_same_state(
        load_checkpoint(tmp_path / "r" / "checkpoints", "best"),
        load_checkpoint(full / "checkpoints", "best"),
    )


def test_a_kill_before_the_promotion_is_repaired_on_resume(mole_run, tmp_path, monkeypatch):
    cfg, full, _ = mole_run

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between saving last and promoting it")

    monkeypatch.setattr(best, "promote_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run_embedded(cfg, tmp_path / "r", progress=False)
    assert "best" not in checkpoint_rounds(tmp_path / "r" / "checkpoints")
    monkeypatch.undo()
    run_embedded(cfg, tmp_path / "r", resume=True, progress=False)
    _assert_same_state(
        load_checkpoint(tmp_path / "r" / "checkpoints", "best"),
        load_checkpoint(full / "checkpoints", "best"),
    )


# ------------------------------------------------------------------------------------------------
# export --round


def test_export_round_best_last_and_number(mole_run, tmp_path):
    _, path, _ = mole_run
    kept = checkpoint_rounds(path / "checkpoints")
    cases = [("best", "best"), ("last", "last"), (str(kept["last"]), "last"), (kept["best"], None)]
    for i, (which, checkpoint) in enumerate(cases):
        manifest = _manifest(export_client(path, 0, tmp_path / f"e{i}", round=which))
        assert manifest["round"] == kept[checkpoint or "best"], which
        if checkpoint is not None:
            assert manifest["checkpoint"] == checkpoint
    assert _manifest(tmp_path / "e0")["selection"]["round"] == kept["best"]
    absent = max(kept.values()) + 5
    with pytest.raises(ValueError, match=rf"round {absent} .* has no checkpoint.*last \(round"):
        export_client(path, 0, tmp_path / "absent", round=absent)
    assert not (tmp_path / "absent").exists()
    with pytest.raises(ValueError, match="best, last or a round number"):
        export_client(path, 0, tmp_path / "bad", round="first")


def test_export_without_a_best_checkpoint_says_what_exists(mole_run, tmp_path):
    _, path, _ = mole_run
    old = tmp_path / "old-run"
    shutil.copytree(path, old)
    shutil.rmtree(old / "checkpoints" / "best")  # as a run written before best was kept
    with pytest.raises(CheckpointError, match=r"no checkpoints/best \(it keeps last \(round 3\)"):
        export_client(old, 0, tmp_path / "e", round="best")
    assert not (tmp_path / "e").exists()


def test_cli_export_round(mole_run, tmp_path):
    _, path, _ = mole_run
    out = tmp_path / "cli"
    args = ["export", str(path), "--client", "1", "--out", str(out)]
    result = runner.invoke(app, [*args, "--round", "best"])
    assert result.exit_code == 0, result.output
    assert _manifest(out)["checkpoint"] == "best" and (out / README).is_file()
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "x"), "--round", "99"])
    assert (
        result.exit_code == 2
        and "round 99" in result.output
        and "has no checkpoint" in result.output
    )
    default = runner.invoke(app, [*args[:-1], str(tmp_path / "d")])
    assert default.exit_code == 0 and _manifest(tmp_path / "d")["checkpoint"] == "last"


# ------------------------------------------------------------------------------------------------
# The loaders: an export is the model the client was scored with


def test_mole_export_loads_as_the_clients_model(mole_run, tmp_path):
    cfg, path, _ = mole_run
    for which in ("best", "last"):
        out = export_client(path, 2, tmp_path / which, round=which)
        state = load_checkpoint(path / "checkpoints", which)
        expected, _ = load_model_and_tokenizer(
            cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
        )
        expected = get_algorithm("fedamole")(cfg).prepare_model(expected)
        set_mole_state(expected, unpack_modules(state["clients"][2]["modules"]))
        loaded, tokenizer = load_exported(out, device="cpu")
        assert isinstance(loaded, PreTrainedModel)
        assert not any(p.requires_grad for p in loaded.parameters())
        torch.testing.assert_close(_logits(loaded), _logits(expected), rtol=0, atol=1e-5)
        batch = tokenizer(["Name a colour.", "Add 2 and 3."], return_tensors="pt", padding=True)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(**batch).logits, expected(**batch).logits, rtol=0, atol=1e-5
            )
        assert _rescored(cfg, loaded, tokenizer, 2) == _logged(path, state["round"], 2, "test")


def test_best_by_test_global_exports_the_received_model(smoke, tmp_path):
    """FedSA-LoRA evaluated globally: the best round's model is the one the client received in
    the next round, the averaged A with its own B."""
    cfg = smoke.replace(**{**FAST, "federation.algorithm": "fedsa_lora", "eval.timing": "global"})
    path = tmp_path / "run"
    run_embedded(cfg, path, progress=False)
    info = checkpoint_info(path / "checkpoints", "best")
    assert info["selection"]["split"] == "test_global"
    out = export_client(path, 1, tmp_path / "e", round="best")
    assert _manifest(out)["model"] == "received"
    state = load_checkpoint(path / "checkpoints", "best")
    own = state["clients"][1]["lora"]
    received = {**own, **select_parts(state["server"]["global"], ("lora_A",))}
    assert any(not torch.equal(received[k], own[k]) for k in own)  # the merge matters
    loaded, tokenizer = load_exported(out, device="cpu")
    torch.testing.assert_close(
        _logits(loaded), _logits(_lora_model(cfg, received)), rtol=0, atol=1e-5
    )
    assert _rescored(cfg, loaded, tokenizer, 1) == _logged(path, info["round"], 1, "test_global")


def test_peft_export_of_a_local_folder_backbone_loads_with_autopeft(smoke, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    tiny_causal_lm("llama", seed=3).save_pretrained(tmp_path / "tiny-base")
    tiny_tokenizer().save_pretrained(tmp_path / "tiny-base")
    cfg = smoke.replace(
        **{
            **FAST,
            "federation.rounds": 1,
            "federation.algorithm": "fedit",
            "model.name": "./tiny-base",  # relative to the directory the run starts from
        }
    )
    run_embedded(cfg, tmp_path / "run", progress=False)
    out = export_client(tmp_path / "run", 0, tmp_path / "export")
    folder = str((tmp_path / "tiny-base").resolve())
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == folder
    assert _manifest(out)["base_model"] == folder
    assert "AutoPeftModelForCausalLM.from_pretrained" in (out / README).read_text()
    state = load_checkpoint(tmp_path / "run" / "checkpoints")
    expected = _logits(_lora_model(cfg, state["clients"][0]["lora"]))
    monkeypatch.chdir(tmp_path / "export")  # no longer where the relative name resolves
    auto = AutoPeftModelForCausalLM.from_pretrained(str(out))
    torch.testing.assert_close(_logits(auto), expected, rtol=0, atol=1e-5)
    base, _ = load_model_and_tokenizer(folder, dtype="float32", device="cpu")
    assert not torch.allclose(_logits(base), expected, atol=1e-5)  # the adapter matters
    loaded, _ = load_exported(out, device="cpu")
    torch.testing.assert_close(_logits(loaded), expected, rtol=0, atol=1e-5)


def test_fdlora_exports_its_fused_adapter(smoke, tmp_path):
    cfg = smoke.replace(
        **{
            **FAST,
            "federation.algorithm": "fdlora",
            "eval.timing": "global",
            "baselines.fdlora.sync_every": 1,
        }
    )
    path = tmp_path / "run"
    run_embedded(cfg, path, progress=False)
    last = cfg.federation.rounds + 1  # the evaluation-only round
    for which in ("last", "best"):
        out = export_client(path, 1, tmp_path / which, round=which)
        state = load_checkpoint(path / "checkpoints", which)
        received_in = last if which == "last" else state["round"] + 1
        weights = {
            r["metric"]: r["value"]
            for r in read_jsonl(path / "metrics.jsonl")
            if r["round"] == received_in and r["client"] == 1 and r["split"] == "fusion"
        }
        w = (weights["received_w0"], weights["received_w1"])
        manifest = _manifest(out)
        assert manifest["kind"] == "peft" and manifest["fdlora"]["fusion_weights"] == list(w)
        fused = fuse(w, state["server"]["global"], state["clients"][1]["private"])
        loaded, tokenizer = load_exported(out, device="cpu")
        torch.testing.assert_close(
            _logits(loaded), _logits(_lora_model(cfg, fused)), rtol=0, atol=1e-5
        )
        assert _rescored(cfg, loaded, tokenizer, 1) == _logged(
            path, received_in - 1, 1, "test_global"
        )


def test_models_after_local_training_that_are_not_kept_are_refused(smoke, tmp_path):
    cfg = smoke.replace(**{**FAST, "federation.rounds": 1, "federation.algorithm": "fdlora"})
    run_embedded(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"not kept in checkpoints.*eval.timing = \"global\""):
        export_client(tmp_path / "run", 0, tmp_path / "e")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("algorithm", ["fedprompt", "fedptuning"])
def test_prompt_methods_export_their_received_prompt(smoke, tmp_path, algorithm):
    cfg = smoke.replace(**{**FAST, "federation.algorithm": algorithm, "eval.timing": "global"})
    path = tmp_path / "run"
    run_embedded(cfg, path, progress=False)
    out = export_client(path, 0, tmp_path / "e", round="best")
    state = load_checkpoint(path / "checkpoints", "best")
    manifest = _manifest(out)
    assert manifest["kind"] == "prompt" and manifest["model"] == "received"
    assert manifest["prompt_round"] == state["round"] + 1
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny:llama"
    backbone, _ = load_model_and_tokenizer(
        cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
    )
    expected = get_algorithm(algorithm)(cfg).prepare_model(backbone)
    params = dict(prompt_encoder(expected).named_parameters())
    with torch.no_grad():
        for key, value in tensors_of_kind(state["server"]["global"], PROMPT_KIND).items():
            params[key].copy_(value)
    loaded, tokenizer = load_exported(out, device="cpu")
    assert isinstance(loaded, VirtualTokenLM)
    torch.testing.assert_close(_logits(loaded), _logits(expected), rtol=0, atol=1e-5)
    assert _rescored(cfg, loaded, tokenizer, 0) == _logged(path, state["round"], 0, "test_global")


def test_readme_explains_an_embedded_backbone():
    from fedamole.export.readme import readme as _readme

    manifest = {
        "algorithm": "fedit",
        "client": 0,
        "round": 3,
        "checkpoint": "last",
        "model": "trained",
        "kind": "peft",
        "base_model": "embedded:smollm2-135m-instruct",
        "model_seed": 42,
    }
    text = _readme(manifest)
    assert "not a Hugging Face hub id" in text and "AutoPeftModelForCausalLM" in text
    assert 'load_model_and_tokenizer("embedded:smollm2-135m-instruct"' in text
    hub = _readme({**manifest, "base_model": "meta-llama/Llama-3.2-1B"})
    assert 'AutoPeftModelForCausalLM.from_pretrained("THIS_FOLDER")' in hub
    assert "not a Hugging Face hub id" not in hub


def test_a_received_global_adapter_needs_no_client_state(smoke, tmp_path):
    """A Flower checkpoint holds no client state: FedIT's received model (the whole global
    adapter) is rebuilt from the server state alone, while FedSA-LoRA's (its own B) needs the
    client's snapshot, which this run directory lacks."""
    from fedamole.export.source import Source as _Source
    from fedamole.export.source import received_lora_state as _received_lora_state

    for algorithm in ("fedit", "fedsa_lora"):
        cfg = smoke.replace(**{"federation.algorithm": algorithm, "eval.timing": "global"})
        model, _ = load_model_and_tokenizer(
            cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
        )
        algo = get_algorithm(algorithm)(cfg)
        algo.setup(algo.prepare_model(model))
        algo.initialized = algo.dirty = True  # after an aggregation: the shared parts go out
        state = {"round": 1, "server": algo.state_dict(), "clients": {}}
        source = _Source(cfg, tmp_path, state, 0, 1, "received")
        if algorithm == "fedit":
            _assert_same_state(_received_lora_state(source), {"lora": algo.global_state})
        else:
            with pytest.raises(ValueError, match="holds no snapshot"):
                _received_lora_state(source)
