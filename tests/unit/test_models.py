"""Model loading: tiny test models, pad-token handling, the embedded default."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from fedamole.models import (
    _ensure_pad_token,
    load_model_and_tokenizer,
    resolve_dtype,
    tiny_causal_lm,
    tiny_tokenizer,
)
from tests.conftest import requires_embedded


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_are_fast_deterministic_and_frozen(arch):
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(f"tiny:{arch}", dtype="float32", device="cpu")
    assert time.perf_counter() - t0 < 1.0
    assert not any(p.requires_grad for p in model.parameters())
    again = tiny_causal_lm(arch)
    for (_, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b)
    ids = tok("héllo wörld")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "héllo wörld"
    assert tok.padding_side == "left"


def test_unknown_tiny_model_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny:llama"):
        load_model_and_tokenizer("tiny:gpt9")


def test_missing_pad_token_gets_a_mean_initialized_row():
    model = tiny_causal_lm("llama")
    base = tiny_tokenizer()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, bos_token="<s>", eos_token="</s>"
    )
    assert tok.pad_token is None
    tok.add_special_tokens({"pad_token": "[PAD]"})
    old = model.get_input_embeddings().weight.detach().clone()
    _ensure_pad_token(model, tok)
    new = model.get_input_embeddings().weight
    assert new.shape[0] == old.shape[0] + 1
    torch.testing.assert_close(new[-1], old.mean(0))
    assert model.config.pad_token_id == tok.pad_token_id


def test_auto_dtype_is_bf16_on_cuda():
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


@pytest.mark.embedded
@requires_embedded
def test_embedded_model_loads_fast_and_answers(monkeypatch):
    load_model_and_tokenizer("embedded:smollm2-135m-instruct", dtype="float32")  # converts once
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer("embedded:smollm2-135m-instruct", dtype="float32")
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"cached load took {elapsed:.2f} s"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_missing_model_folder_names_model_name(tmp_path):
    from fedamole.models import load_backbone

    with pytest.raises(ValueError, match=r"`model.name` = '.*no-model': no such folder"):
        load_backbone(str(tmp_path / "no-model"))


@pytest.mark.embedded
@requires_embedded
def test_loading_prints_no_third_party_noise(capfd, caplog):
    """No transformers chatter ("layers were not sharded") or weight-loading bar in a run's
    console or log.txt; transformers' own settings are restored afterwards."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    load_model_and_tokenizer("embedded:smollm2-135m-instruct", dtype="float32")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "sharded" not in err
    assert "sharded" not in caplog.text
    assert hf_logging.get_verbosity() == before
