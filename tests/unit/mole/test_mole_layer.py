"""MoLELinear against a naive per-token loop written from
docs/algorithm.md#routing, dropout, dtypes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedamole.mole import MoLELinear, mole_forward

D_IN, D_OUT, RANK = 12, 10, 4


def make_layer(
    n: int,
    top_k: int,
    *,
    router: str = "expert_embedding",
    shared: bool = True,
    dropout: float = 0.0,
    dtype: torch.dtype = torch.float64,
    adapter_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> MoLELinear:
    """A layer over a random base with random non-zero experts, shared expert, token_proj, gate."""
    gen = torch.Generator().manual_seed(seed)
    base = nn.Linear(D_IN, D_OUT, dtype=dtype)
    with torch.no_grad():
        base.weight.copy_(torch.randn(D_OUT, D_IN, generator=gen))
        base.bias.copy_(torch.randn(D_OUT, generator=gen))
    base.requires_grad_(False)
    layer = MoLELinear(
        base,
        num_experts=n,
        rank=RANK,
        alpha=8.0,
        top_k=top_k,
        dropout=dropout,
        shared_expert=shared,
        router=router,
        adapter_dtype=adapter_dtype,
    )
    gate = torch.randn(n, D_IN, generator=gen) if router == "linear" else None
    layer.set_experts(
        torch.arange(10, 10 + n),
        torch.randn(n, RANK, D_IN, generator=gen),
        torch.randn(n, D_OUT, RANK, generator=gen),
        gate=gate,
    )
    with torch.no_grad():
        for param in (layer.token_proj.weight, layer.shared_A, layer.shared_B):
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=gen))
    return layer


def naive_forward(layer: MoLELinear, x: torch.Tensor) -> torch.Tensor:
    """docs/algorithm.md#routing, one token at a time, one expert at a time (no dropout)."""
    s, r, k = layer.scaling, layer.rank, layer.top_k
    outputs = []
    for x_t in x:
        y = layer.base_layer.weight @ x_t + layer.base_layer.bias
        if layer.shared_A is not None:
            y = y + s * (layer.shared_B @ (layer.shared_A @ x_t))
        if layer.router == "expert_embedding":
            q = layer.token_proj.weight @ x_t
            z = torch.stack(
                [(layer.lora_A[e] @ x_t) @ q / math.sqrt(r) for e in range(layer.num_experts)]
            )
        else:
            z = torch.stack([layer.gate[e] @ x_t for e in range(layer.num_experts)])
        p = torch.softmax(z, dim=0)
        chosen = sorted(range(layer.num_experts), key=lambda e: -p[e].item())[:k]
        norm = sum(p[e] for e in chosen)
        for e in chosen:
            y = y + p[e] / norm * s * (layer.lora_B[e] @ (layer.lora_A[e] @ x_t))
        outputs.append(y)
    return torch.stack(outputs)


def grads(layer: MoLELinear, x: torch.Tensor, out: torch.Tensor, seed: int = 1) -> dict:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    params = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    tensors = [x, *params.values()]
    values = torch.autograd.grad((out * weight).sum(), tensors, allow_unused=True)
    return dict(zip(["x", *params], values, strict=True))


@pytest.mark.parametrize("router", ["expert_embedding", "linear"])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize(("n", "top_k"), [(2, 1), (2, 2), (3, 1), (3, 2), (8, 1), (8, 2)])
def test_forward_and_gradients_match_naive_loop(n, top_k, router, shared):
    layer = make_layer(n, top_k, router=router, shared=shared)
    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x.requires_grad_()
    fast = layer(x)
    slow = naive_forward(layer, x.reshape(-1, D_IN)).reshape(fast.shape)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    fast_grads, slow_grads = grads(layer, x, fast), grads(layer, x, slow)
    assert fast_grads.keys() == slow_grads.keys()
    for name, value in fast_grads.items():
        expected = slow_grads[name]
        if expected is None:  # e.g. token_proj with the linear router: unused by both
            assert value is None, name
            continue
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-9, msg=name)


def test_linear_router_leaves_token_proj_without_gradient():
    layer = make_layer(3, 2, router="linear")
    x = torch.randn(4, D_IN, dtype=torch.float64)
    layer(x).sum().backward()
    assert layer.token_proj.weight.grad is None
    assert layer.gate.grad is not None and layer.gate.grad.abs().sum() > 0


def test_mole_forward_without_base_returns_the_adapter_output_alone():
    layer = make_layer(3, 2)
    x = torch.randn(6, D_IN, dtype=torch.float64)
    delta, routing = mole_forward(
        x,
        layer.lora_A,
        layer.lora_B,
        top_k=2,
        scaling=layer.scaling,
        token_weight=layer.token_proj.weight,
        shared_A=layer.shared_A,
        shared_B=layer.shared_B,
    )
    torch.testing.assert_close(delta + layer.base_layer(x), layer(x))
    assert routing.indices.shape == (6, 2)
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(6, dtype=torch.float64))


def test_dropout_only_touches_the_expert_path():
    layer = make_layer(3, 2, dropout=0.5)
    x = torch.randn(4, D_IN, dtype=torch.float64)
    reference = layer.eval()(x)
    logits = []
    handle = layer.register_routing_hook(lambda module, routing: logits.append(routing.logits))
    layer.eval()(x)
    layer.train()
    copies = 4000  # each copy of a token gets its own dropout mask
    torch.manual_seed(0)
    train_out = layer(x.repeat(copies, 1)).reshape(copies, 4, D_OUT)
    handle.remove()
    # Routing is computed on the un-dropped input: identical logits in train and eval mode.
    torch.testing.assert_close(logits[1], logits[0].repeat(copies, 1))
    # The expert path is dropped (outputs vary) ...
    assert train_out.std(dim=0).min() > 1e-3
    # ... but unbiased: E[drop(x)] = x and routing does not depend on the mask.
    spread = train_out.std(dim=0) / math.sqrt(copies)
    assert ((train_out.mean(dim=0) - reference).abs() < 5 * spread + 1e-9).all()
    # With every B zero, train mode gives exactly the base output: the base path is never dropped.
    zero = make_layer(3, 2, dropout=0.5)
    zero.set_experts(zero.expert_ids, zero.lora_A, torch.zeros_like(zero.lora_B))
    with torch.no_grad():
        zero.shared_B.zero_()
    torch.testing.assert_close(zero.train()(x), zero.base_layer(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("adapter_dtype", "param_dtype"), [(torch.float32, torch.float32), (None, torch.bfloat16)]
)
def test_dtype_policy(adapter_dtype, param_dtype):
    layer = make_layer(3, 2, dtype=torch.bfloat16, adapter_dtype=adapter_dtype)
    for name, param in layer.named_parameters():
        if not name.startswith("base_layer."):
            assert param.dtype == param_dtype, name
    x = torch.randn(2, 5, D_IN).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert out.shape == (2, 5, D_OUT)
    # Same math in float64 (from the same weights) agrees to bf16 precision.
    exact = naive_forward(_to_float64(layer), x.reshape(-1, D_IN).double()).reshape(out.shape)
    torch.testing.assert_close(out.double(), exact, rtol=0.05, atol=0.1)


def _to_float64(layer: MoLELinear) -> MoLELinear:
    """A float64 copy of ``layer`` (same experts and weights)."""
    copy = make_layer(layer.num_experts, layer.top_k)
    source = dict(layer.named_parameters())
    with torch.no_grad():
        for name, target in copy.named_parameters():
            target.copy_(source[name].double())
    return copy


def test_set_experts_changes_the_number_of_experts():
    layer = make_layer(3, 2)
    old = {name: p for name, p in layer.named_parameters()}
    gen = torch.Generator().manual_seed(5)
    lora_A = torch.randn(5, RANK, D_IN, generator=gen, dtype=torch.float64)
    lora_B = torch.randn(5, D_OUT, RANK, generator=gen, dtype=torch.float64)
    layer.set_experts(torch.tensor([7, 1, 4, 0, 9]), lora_A, lora_B)
    assert layer.num_experts == 5
    assert layer.expert_ids.tolist() == [7, 1, 4, 0, 9]
    assert layer.lora_A is not old["lora_A"] and layer.lora_A.requires_grad
    torch.testing.assert_close(layer.lora_A.detach(), lora_A)
    assert layer.lora_A.data_ptr() != lora_A.data_ptr()  # copied, not aliased
    x = torch.randn(4, D_IN, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_forward(layer, x))
    names = {name for name, _ in layer.named_parameters()}
    assert names == {n for n in old}


def test_set_experts_errors():
    layer = make_layer(3, 2)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    with pytest.raises(
        ValueError, match=r"`top_k` \(2\) must be <= the number of experts held \(1\)"
    ):
        layer.set_experts(torch.tensor([0]), a[:1], b[:1])
    with pytest.raises(ValueError, match=r"`lora_A` must have shape \(n, r, d_in\)"):
        layer.set_experts(torch.arange(3), a[:, :, :5], b)
    with pytest.raises(ValueError, match=r"`lora_B` must have shape"):
        layer.set_experts(torch.arange(3), a, b[:2])
    with pytest.raises(ValueError, match="distinct"):
        layer.set_experts(torch.tensor([1, 1, 2]), a, b)
    with pytest.raises(ValueError, match="integers"):
        layer.set_experts(torch.tensor([0.0, 1.0, 2.0]), a, b)
    with pytest.raises(ValueError, match="only used with router='linear'"):
        layer.set_experts(torch.arange(3), a, b, gate=torch.zeros(3, D_IN))
    linear = make_layer(3, 2, router="linear")
    with pytest.raises(ValueError, match=r"`gate` must have shape \(n, d_in\)"):
        linear.set_experts(torch.arange(3), a, b)
    # A failed call leaves the layer as it was.
    assert layer.num_experts == 3 and layer.expert_ids.tolist() == [10, 11, 12]


def test_forward_rejects_top_k_above_experts_held():
    layer = make_layer(2, 2)
    layer.top_k = 3
    with pytest.raises(
        ValueError, match=r"`top_k` \(3\) must be <= the number of experts held \(2\)"
    ):
        layer(torch.randn(2, D_IN, dtype=torch.float64))


def test_constructor_rejects_non_linear_and_unknown_router():
    with pytest.raises(TypeError, match="wraps nn.Linear"):
        MoLELinear(nn.Conv1d(3, 3, 1), num_experts=2, rank=2, alpha=4, top_k=1)
    with pytest.raises(ValueError, match="`router`"):
        MoLELinear(nn.Linear(3, 3), num_experts=2, rank=2, alpha=4, top_k=1, router="noisy")


def test_routing_hook_is_removable():
    layer = make_layer(3, 2)
    seen = []
    handle = layer.register_routing_hook(lambda module, routing: seen.append(routing))
    layer(torch.randn(2, D_IN, dtype=torch.float64))
    handle.remove()
    layer(torch.randn(2, D_IN, dtype=torch.float64))
    assert len(seen) == 1
    torch.testing.assert_close(seen[0].probs.sum(-1), torch.ones(2, dtype=torch.float64))
