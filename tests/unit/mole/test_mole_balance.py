"""The load-balance loss: hand-computed cases and the collector context manager
(docs/algorithm.md#load-balance-loss)."""

from __future__ import annotations

import pytest
import torch

from fedamole.models import tiny_causal_lm
from fedamole.mole import balance_loss, inject_mole, load_balance_loss, mole_modules

PROBS = torch.tensor(
    [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.15, 0.6], [0.7, 0.2, 0.1]], dtype=torch.float64
)


def top(probs: torch.Tensor, k: int) -> torch.Tensor:
    return probs.topk(k, dim=-1).indices


def test_hand_computed_top1():
    # argmax experts 0, 1, 2, 0 -> f = [2, 1, 1] / 4; P_mean = [0.3875, 0.3125, 0.3]
    expected = 3 * (0.3875 * 0.5 + 0.3125 * 0.25 + 0.3 * 0.25)
    assert load_balance_loss(PROBS, top(PROBS, 1)).item() == pytest.approx(expected)


def test_hand_computed_top2():
    # top-2 sets {0,1}, {1,2}, {2,0}, {0,1} -> f = [3, 3, 2] / 8
    expected = 3 * (0.3875 * 3 / 8 + 0.3125 * 3 / 8 + 0.3 * 2 / 8)
    assert load_balance_loss(PROBS, top(PROBS, 2)).item() == pytest.approx(expected)


def test_token_mask_excludes_padding():
    # Without token 3, top-1 picks 0, 1, 2 once each: f is uniform and the loss is sum(P_mean) = 1.
    mask = torch.tensor([1, 1, 1, 0])
    assert load_balance_loss(PROBS, top(PROBS, 1), mask).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="has 3 entries but the layer routed 4 tokens"):
        load_balance_loss(PROBS, top(PROBS, 1), mask[:3])
    with pytest.raises(ValueError, match="selects no token"):
        load_balance_loss(PROBS, top(PROBS, 1), torch.zeros(4))


def test_the_count_term_carries_no_gradient():
    probs = PROBS.clone().requires_grad_()
    load_balance_loss(probs, top(PROBS, 1)).backward()
    # L = n * sum_e mean_t(p_te) f_e, so dL/dp_te = n f_e / T when f is a constant.
    expected = (3 * torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64) / 4).expand(4, 3)
    torch.testing.assert_close(probs.grad, expected)


@pytest.fixture
def model(cfg, randomize):
    model = tiny_causal_lm("llama")
    inject_mole(
        model,
        cfg.model_copy(update={"num_experts": 6}),
        generator=torch.Generator(),
        num_experts_held=3,
    )
    randomize(model)
    return model


def test_collector_sums_module_terms_times_coef(model):
    ids = torch.randint(3, 259, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    seen = {}
    handles = [
        m.register_routing_hook(lambda mod, routing, name=name: seen.__setitem__(name, routing))
        for name, m in mole_modules(model).items()
    ]
    with balance_loss(model, coef=0.5, token_mask=mask) as bal:
        model(input_ids=ids, attention_mask=mask)
    for handle in handles:
        handle.remove()
    keep = mask.reshape(-1).bool()
    expected = {name: load_balance_loss(r.probs[keep], r.indices[keep]) for name, r in seen.items()}
    assert bal.per_module().keys() == expected.keys() and len(expected) == 4
    for name, term in bal.per_module().items():
        torch.testing.assert_close(term, expected[name])
    torch.testing.assert_close(bal.total(), 0.5 * torch.stack(list(expected.values())).sum())
    bal.total().backward()  # differentiable w.r.t. the routers
    q_proj = mole_modules(model)["model.layers.0.self_attn.q_proj"]
    assert q_proj.token_proj.weight.grad.abs().sum() > 0


def test_collector_is_removed_after_the_block_even_on_error(model):
    ids = torch.randint(3, 259, (1, 5))
    with pytest.raises(KeyError), balance_loss(model, coef=1.0) as bal:
        model(input_ids=ids)
        raise KeyError("boom")
    before = bal.per_module()
    model(input_ids=ids)  # outside the block: nothing more is recorded
    assert bal.per_module().keys() == before.keys()
    for name, term in bal.per_module().items():
        torch.testing.assert_close(term, before[name])


def test_collector_errors(model):
    with balance_loss(model, coef=1.0) as bal, pytest.raises(RuntimeError, match="no routing"):
        bal.total()
    with (
        pytest.raises(ValueError, match="no MoLE layers"),
        balance_loss(tiny_causal_lm(), coef=1.0),
    ):
        pass
