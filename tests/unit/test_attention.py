"""The float32 math attention of local training equals sdpa to rounding, and is switched on only
for the duration of training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fedamole import attention
from fedamole.attention import TRAINING_ATTENTION, math_attention, training_attention
from fedamole.models import load_model_and_tokenizer
from fedamole.training import model_inputs

MODULE = SimpleNamespace(training=False, is_causal=True)


def _reference(query, key, value, allowed):
    """Attention written out per head, float64, from the definition."""
    groups = query.shape[1] // key.shape[1]
    out = torch.zeros(query.shape, dtype=torch.float64)
    for b in range(query.shape[0]):
        for h in range(query.shape[1]):
            q, k, v = (
                query[b, h].double(),
                key[b, h // groups].double(),
                value[b, h // groups].double(),
            )
            scores = q @ k.T / q.shape[-1] ** 0.5  # (T, S)
            scores = scores.masked_fill(~allowed[b, 0], float("-inf"))
            out[b, h] = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2)  # (B, T, H, d)


@pytest.mark.parametrize("prefix", [0, 3])  # S = T, and a cached prefix (S = T + 3)
def test_math_attention_equals_the_definition_with_gqa_and_left_padding(prefix):
    gen = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, q_len, dim = 2, 4, 2, 5, 8
    k_len = q_len + prefix
    query = torch.randn(batch, heads, q_len, dim, generator=gen)
    key = torch.randn(batch, kv_heads, k_len, dim, generator=gen)
    value = torch.randn(batch, kv_heads, k_len, dim, generator=gen)
    causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(prefix)  # (T, S)
    allowed = causal.expand(batch, 1, q_len, k_len).clone()
    allowed[1, :, :, :2] = False  # row 1 left-padded by 2 keys
    out, weights = math_attention(MODULE, query, key, value, allowed)
    assert weights is None and out.shape == (batch, q_len, heads, dim)
    real = allowed.any(-1)[:, 0]  # (B, T): queries that attend to something
    expected = _reference(query, key, value, allowed)
    torch.testing.assert_close(out[real].double(), expected[real], rtol=1e-5, atol=1e-6)
    # None is the plain causal mask
    none, _ = math_attention(MODULE, query, key, value, None)
    full, _ = math_attention(MODULE, query, key, value, causal.expand(batch, 1, q_len, k_len))
    torch.testing.assert_close(none, full, rtol=0, atol=0)


def test_math_attention_matches_sdpa_and_falls_back_to_it_for_long_rows(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, 2, 6, 4, generator=gen) for _ in range(3))
    sdpa = F.scaled_dot_product_attention(query, key, value, is_causal=True).transpose(1, 2)
    ours, _ = math_attention(MODULE, query, key, value, None)
    torch.testing.assert_close(ours, sdpa, rtol=1e-5, atol=1e-6)
    calls = []
    monkeypatch.setattr(attention, "MAX_SCORES", 1)
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or (sdpa, None)
    )
    math_attention(MODULE, query, key, value, None)
    assert calls == [1]


def test_bf16_inputs_give_bf16_outputs_computed_in_float32():
    gen = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn(1, 2, 6, 4, generator=gen) for _ in range(3))
    out, _ = math_attention(MODULE, query.bfloat16(), key.bfloat16(), value.bfloat16(), None)
    assert out.dtype == torch.bfloat16
    exact, _ = math_attention(
        MODULE, query.bfloat16().float(), key.bfloat16().float(), value.bfloat16().float(), None
    )
    torch.testing.assert_close(out, exact.bfloat16(), rtol=0, atol=0)  # one rounding, at the end


def test_training_attention_switches_for_the_block_only_and_matches_sdpa():
    model, _ = load_model_and_tokenizer("tiny:llama", dtype="float32", device="cpu")
    model.requires_grad_(True)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(3, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :8] = 0  # a row of one token
    inputs = model_inputs({"input_ids": ids, "attention_mask": mask}, torch.device("cpu"))

    def forward_backward():
        model.zero_grad()
        logits = model(**inputs).logits  # (B, T, V)
        (logits * mask[..., None]).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    logits, grads = forward_backward()
    with training_attention(model) as switched:
        assert switched and model.config._attn_implementation == TRAINING_ATTENTION
        fast_logits, fast_grads = forward_backward()
    assert model.config._attn_implementation == "sdpa"
    real = mask.bool()
    torch.testing.assert_close(fast_logits[real], logits[real], rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        assert torch.isfinite(fast_grads[name]).all(), name
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(RuntimeError), training_attention(model):
        raise RuntimeError("training failed")
    assert model.config._attn_implementation == "sdpa"  # restored on an error too


def test_training_attention_leaves_other_implementations_alone():
    model, _ = load_model_and_tokenizer("tiny:llama", dtype="float32", device="cpu")
    model.set_attn_implementation("eager")
    with training_attention(model) as switched:
        assert not switched and model.config._attn_implementation == "eager"
