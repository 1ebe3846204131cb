"""The client-round template, the round plan and update screening (algorithms/base.py)."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms.base import (
    RoundPlan,
    RoundTemplate,
    client_round,
    screen_updates,
)
from fedamole.federated.messages import ClientMessage, ServerMessage


def test_round_plan_round_trips_through_a_message_config():
    plan = RoundPlan(train=True, upload=False, lr=0.5, eval_personalized=True, sync=True)
    config = plan.to_config()
    assert all(isinstance(v, bool | float) for v in config.values())
    assert RoundPlan.from_config({**config, "unrelated": 1}) == plan


def test_round_plan_names_a_missing_field():
    with pytest.raises(TypeError, match="eval_personalized"):
        RoundPlan.from_config({"train": True, "upload": True, "lr": 1.0})


def test_plan_of_the_evaluation_only_round(smoke):
    cfg = smoke.replace(**{"federation.algorithm": "fedit", "eval.timing": "both"})
    plan = RoundPlan.for_round(cfg, cfg.federation.rounds + 1)
    assert (plan.train, plan.upload, plan.eval_personalized, plan.eval_received) == (
        False,
        False,
        False,
        True,
    )
    assert plan.active


class _Recorder(RoundTemplate):
    """Records the order in which the template calls the hooks."""

    def __init__(self, cfg):
        self.cfg, self.calls = cfg, []

    def load(self, ctx, job):
        self.calls.append("load")

    def evaluate_received(self, ctx, job):
        self.calls.append("received")
        return {"received/score": 0.25}

    def train_round(self, ctx, job):
        self.calls.append("train")
        return {"train/loss": float(torch.rand(()))}  # seeded by the template

    def upload(self, ctx, job):
        self.calls.append("upload")
        return {"x:0": torch.ones(2)} if job.plan.upload else {}

    def evaluate_personalized(self, ctx, job):
        self.calls.append("personalized")
        return {"test/score": 0.5}


class _Ctx:
    """A stand-in for ClientContext: the template reads only these."""

    client_id = 1
    data = type("Data", (), {"train": (0, 1, 2)})


def test_client_round_calls_the_hooks_in_order_and_seeds_training(smoke):
    algo = _Recorder(smoke)
    plan = RoundPlan(train=True, upload=True, lr=0.1, eval_personalized=True, eval_received=True)
    msg = ServerMessage(3, 1, {}, plan.to_config())
    first = client_round(algo, 3, msg, _Ctx())
    assert algo.calls == ["load", "received", "train", "upload", "personalized"]
    assert first.config == {"num_examples": 3} and set(first.tensors) == {"x:0"}
    assert set(first.metrics) == {"received/score", "train/loss", "test/score"}
    again = client_round(_Recorder(smoke), 3, msg, _Ctx())
    assert again.metrics["train/loss"] == first.metrics["train/loss"]  # same (seed, round, client)


def test_client_round_skips_what_the_plan_leaves_out(smoke):
    algo = _Recorder(smoke)
    plan = RoundPlan(train=False, upload=False, lr=0.1, eval_personalized=True)
    reply = client_round(algo, 0, ServerMessage(0, 1, {}, plan.to_config()), _Ctx())
    assert algo.calls == ["load", "upload", "personalized"] and reply.tensors == {}


def _reply(client, tensors, count):
    return ClientMessage(1, client, tensors, {"num_examples": count}, {})


def test_screen_updates_rejects_with_reasons_and_checks_counts_when_weighted():
    ok = {"x:0": torch.ones(2)}
    updates = {0: _reply(0, ok, 5), 1: _reply(1, {"x:0": torch.ones(3)}, 5), 2: _reply(2, ok, 0)}

    def problems(client, msg):
        return [] if msg.tensors["x:0"].shape == (2,) else ["x:0: wrong shape"]

    accepted, rejected = screen_updates(1, updates, problems, weighted=False)
    assert sorted(accepted) == [0, 2] and rejected == {1: "x:0: wrong shape"}
    accepted, rejected = screen_updates(1, updates, problems, weighted=True)
    assert sorted(accepted) == [0] and sorted(rejected) == [1, 2]
    assert "num_examples = 0" in rejected[2]
    # a reply without tensors has nothing to weight: its count is not checked
    accepted, _ = screen_updates(1, {3: _reply(3, {}, 0)}, lambda c, m: [], weighted=True)
    assert list(accepted) == [3]
