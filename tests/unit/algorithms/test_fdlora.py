"""FDLoRA: the outer Nesterov step by hand, warm-up then OuterOpt, sync rounds, the fusion search's
guarantees, fused weights, state round trip."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.fdlora import FDLoRA, fuse, fusion_search, outer_step
from fedamole.algorithms.lora_common import lora_state
from fedamole.data.types import ClientData, Example
from fedamole.federated.messages import ClientMessage
from fedamole.models import load_model_and_tokenizer


@pytest.fixture(scope="module")
def fdlora_smoke(smoke):
    return smoke.replace(**{"federation.algorithm": "fdlora"})


def _build(cfg):
    model, tokenizer = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu")
    algo = FDLoRA(cfg)
    model = algo.prepare_model(model)
    algo.setup(model)
    return algo, model, tokenizer


# --------------------------------------------------------------------------------------------------
# OuterOpt


def test_outer_step_equals_hand_computed_nesterov():
    glob = {"w": torch.tensor([1.0, -2.0])}
    clients = [{"w": torch.tensor([0.0, -1.0])}, {"w": torch.tensor([0.5, -3.0])}]
    # g = mean(global - client) = ([1, -1] + [0.5, 1]) / 2 = [0.75, 0]; buf = g (first step)
    # update = g + 0.5 * buf = [1.125, 0]; new = global - 2 * update = [-1.25, -2]
    new, buf = outer_step(glob, clients, {}, lr=2.0, momentum=0.5)
    torch.testing.assert_close(buf["w"], torch.tensor([0.75, 0.0]))
    torch.testing.assert_close(new["w"], torch.tensor([-1.25, -2.0]))
    # second step, one client at [0, 0]: g = [-1.25, -2]; buf = 0.5*[0.75, 0] + g = [-0.875, -2]
    # update = g + 0.5 * buf = [-1.6875, -3]; new = new - 2 * update = [2.125, 4]
    new2, buf2 = outer_step(new, [{"w": torch.zeros(2)}], buf, lr=2.0, momentum=0.5)
    torch.testing.assert_close(buf2["w"], torch.tensor([-0.875, -2.0]))
    torch.testing.assert_close(new2["w"], torch.tensor([2.125, 4.0]))
    torch.testing.assert_close(glob["w"], torch.tensor([1.0, -2.0]))  # inputs untouched


def test_outer_step_matches_torch_sgd_nesterov():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 4, generator=gen)
    param = torch.nn.Parameter(theta.clone())
    opt = torch.optim.SGD([param], lr=0.7, momentum=0.5, nesterov=True)
    state, buf = {"p": theta.clone()}, {}
    for _ in range(3):
        clients = [{"p": state["p"] - torch.randn(3, 4, generator=gen)} for _ in range(3)]
        weights = [1.0, 2.0, 3.0]
        param.grad = (
            sum(w * (param.detach() - c["p"]) for w, c in zip(weights, clients, strict=True)) / 6
        )
        opt.step()
        state, buf = outer_step(state, clients, buf, lr=0.7, momentum=0.5, weights=weights)
        torch.testing.assert_close(state["p"], param.detach())


def _uploads(algo, values, rnd):
    return {
        c: ClientMessage(
            rnd,
            c,
            {k: torch.full_like(v, val) for k, v in algo.global_state.items()},
            {"num_examples": 10},
            {},
        )
        for c, val in enumerate(values)
    }


def test_warm_up_averages_then_every_round_takes_an_outer_step(fdlora_smoke):
    cfg = fdlora_smoke.replace(
        **{
            "federation.rounds": 3,
            "baselines.fdlora.outer_lr": 1.0,
            "baselines.fdlora.outer_momentum": 0.5,
        }
    )
    algo, _, _ = _build(cfg)
    summary = algo.aggregate(1, _uploads(algo, [1.0, 2.0, 3.0], 1))
    assert summary.info["step"] == "warm-up average" and algo.momentum == {}
    for v in algo.global_state.values():
        torch.testing.assert_close(v, torch.full_like(v, 2.0))
    # round 2: g = 2 - mean(0, 1, 2) = 1; buf = 1; new = 2 - (1 + 0.5) = 0.5
    summary = algo.aggregate(2, _uploads(algo, [0.0, 1.0, 2.0], 2))
    assert summary.info["step"] == "outer"
    for k, v in algo.global_state.items():
        torch.testing.assert_close(v, torch.full_like(v, 0.5))
        torch.testing.assert_close(algo.momentum[k], torch.full_like(v, 1.0))
    bad = _uploads(algo, [0.5, float("inf"), 0.5], 3)
    summary = algo.aggregate(3, bad)  # g = 0 from the accepted; buf = 0.5; new = 0.5 - 0.25
    assert set(summary.rejected) == {1}
    for v in algo.global_state.values():
        torch.testing.assert_close(v, torch.full_like(v, 0.25))
    other = FDLoRA(cfg)
    other.load_state_dict(algo.state_dict())
    assert other.momentum.keys() == algo.momentum.keys()
    assert algo.aggregate(4, bad).accepted == (0, 1, 2)  # the eval-only round: nothing happens
    for v in algo.global_state.values():
        torch.testing.assert_close(v, torch.full_like(v, 0.25))


# --------------------------------------------------------------------------------------------------
# Sync of the private adapter


@pytest.mark.parametrize(("k", "rounds"), [(1, {1, 2, 3, 4, 5, 6, 7}), (2, {2, 4, 6}), (5, {2, 7})])
def test_sync_rounds(fdlora_smoke, k, rounds):
    cfg = fdlora_smoke.replace(**{"federation.rounds": 7, "baselines.fdlora.sync_every": k})
    algo = FDLoRA(cfg)
    assert {r for r in range(9) if algo.configure_round(r)[0].config["sync"]} == rounds


def test_client_copies_its_trained_adapter_only_on_sync_rounds(fdlora_smoke):
    cfg = fdlora_smoke.replace(
        **{"federation.rounds": 3, "baselines.fdlora.sync_every": 2, "train.steps": 1}
    )
    algo, model, tokenizer = _build(cfg)
    ex = Example("Q: hi\nA:", "hello", "t")
    data = ClientData(train=(ex,) * 4, embedding=(ex,), eval=(), test=())
    ctx = ClientContext(0, data, model, tokenizer)
    private = {}
    for rnd in (1, 2, 3):
        reply = algo.local_update(rnd, algo.configure_round(rnd)[0], ctx)
        algo.aggregate(rnd, {0: reply})
        private[rnd] = {k: v.clone() for k, v in ctx.state.get("private", {}).items()}
        if rnd == 2:
            for key, value in reply.tensors.items():  # the adapter it trained this round
                torch.testing.assert_close(private[2][key], value)
    assert private[1] == {}  # the warm-up does not sync (k = 2)
    for key in private[2]:
        torch.testing.assert_close(private[3][key], private[2][key])  # round 3 does not sync


# --------------------------------------------------------------------------------------------------
# Fusion


def _counting(fn):
    calls = []

    def loss(w):
        calls.append(w)
        return fn(w)

    return loss, calls


@pytest.mark.parametrize("budget", [1, 2, 5, 12, 40])
@pytest.mark.parametrize(
    "fn",
    [
        lambda w: (w[0] - 3.0) ** 2 + (w[1] + 0.4) ** 2,  # optimum outside the box
        lambda w: (w[0] ** 2 - 0.6) ** 2 + (w[1] ** 2 - 0.2) ** 2 + 0.3 * w[0] * w[1],  # even
        lambda w: w[0] ** 2 + w[1] ** 2,  # (0, 0) is optimal
    ],
)
def test_fusion_search_keeps_bounds_budget_and_never_loses_to_the_origin(fn, budget):
    loss, calls = _counting(fn)
    result = fusion_search(loss, budget=budget, l1=0.05, sign_symmetric=False)
    assert 1 <= len(calls) <= budget and result.evaluations == len(calls)
    assert calls[0] == (0.0, 0.0)
    assert all(abs(a) <= 1.5 and abs(b) <= 1.5 for a, b in calls)
    objective = {w: v for w, v in result.history}
    assert result.objective == min(objective.values()) == objective[result.weights]
    assert result.objective <= objective[(0.0, 0.0)]
    assert fusion_search(fn, budget=budget, l1=0.05, sign_symmetric=False) == result  # determinism


def test_fusion_search_finds_the_box_corner_and_first_polls_each_adapter():
    loss, calls = _counting(lambda w: (w[0] - 3.0) ** 2 + (w[1] + 2.0) ** 2)
    result = fusion_search(loss, budget=40, l1=0.0, sign_symmetric=False)
    assert calls[:2] == [(0.0, 0.0), (1.0, 0.0)]  # pure global first
    assert result.weights == (1.5, -1.5)


def test_fusion_search_spends_no_budget_on_mirrored_points():
    loss, calls = _counting(lambda w: (w[0] * w[1] - 0.5) ** 2 + 0.1 * w[0] ** 2)
    result = fusion_search(loss, budget=5, l1=0.05, sign_symmetric=True)
    assert len(calls) == 5
    assert not any((-a + 0.0, -b + 0.0) in calls[:i] for i, (a, b) in enumerate(calls))
    assert result.objective <= result.history[0][1]


def test_fused_model_is_w0_global_plus_w1_private(fdlora_smoke):
    cfg = fdlora_smoke.replace(**{"baselines.fdlora.fusion_budget": 3})
    algo, model, tokenizer = _build(cfg)
    gen = torch.Generator().manual_seed(3)
    glob = {k: torch.randn(v.shape, generator=gen) for k, v in algo.global_state.items()}
    private = {k: torch.randn(v.shape, generator=gen) for k, v in algo.global_state.items()}
    fused = fuse((0.5, -1.25), glob, private)
    for k in glob:
        torch.testing.assert_close(fused[k], 0.5 * glob[k] - 1.25 * private[k])
    ex = Example("Q: hi\nA:", "hello", "t")
    ctx = ClientContext(0, ClientData((ex,), (ex, ex), (), ()), model, tokenizer)
    result = algo._fuse(ctx, glob, private)
    assert result.evaluations <= 3
    loaded = lora_state(model)
    for k, v in fuse(result.weights, glob, private).items():
        torch.testing.assert_close(loaded[k], v)
    assert ctx.state["fusion_position"] == (5 * cfg.train.batch_size) % 2


def test_local_training_decays_weights_decoupled_as_adamw(fdlora_smoke):
    """With B = 0 the gradient of every A is 0: AdamW shrinks A by exactly ``lr * wd`` while
    Adam's L2 decay would move it by about ``lr`` (a normalized step)."""
    cfg = fdlora_smoke.replace(
        **{
            "train.steps": 1,
            "train.lr": 0.01,
            "baselines.fdlora.weight_decay": 0.1,
            "baselines.lora_dropout": 0.0,
        }
    )
    algo, model, tokenizer = _build(cfg)
    ex = Example("Q: hi\nA:", "hello", "t")
    ctx = ClientContext(0, ClientData((ex,) * 2, (ex,), (), ()), model, tokenizer)
    reply = algo.local_update(1, algo.configure_round(1)[0], ctx)
    for key, before in algo.global_state.items():
        if key.startswith("lora_A:"):
            torch.testing.assert_close(reply.tensors[key], before * (1 - 0.01 * 0.1))
        else:
            assert reply.tensors[key].abs().sum() > 0  # B did learn


def test_registry():
    from fedamole.algorithms import get_algorithm

    assert get_algorithm("fdlora") is FDLoRA and FDLoRA.name == "fdlora"
