"""Every algorithm reports each optimizer step's loss, tokens and lr (``train/step_loss@<step>``,
docs/run-directory.md#metricsjsonl), consistent with its round's ``train/loss``."""

from __future__ import annotations

import dataclasses

import pytest

from fedamole.algorithms import ALGORITHMS
from fedamole.algorithms.base import ClientContext
from fedamole.data import load_federated_data
from fedamole.federated.messages import split_step_key, step_key

STEPS = 3
LOCAL_STEPS = 2  # FedDPA's local adapter: baselines.feddpa.local_steps


def _per_step(metrics, prefix, steps):
    """(losses, tokens, lrs) of steps 1..steps under ``<prefix>loss@<step>`` and so on."""
    return tuple(
        [metrics[step_key(f"{prefix}{name}", s)] for s in range(1, steps + 1)]
        for name in ("loss", "tokens", "lr")
    )


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_reports_the_steps_behind_its_round_loss(name, make_algo):
    algo, model, tokenizer = make_algo(
        name, **{"train.steps": STEPS, "baselines.feddpa.local_steps": LOCAL_STEPS}
    )
    ctx = ClientContext(0, load_federated_data(algo.cfg).clients[0], model, tokenizer)
    msg = algo.configure_round(1)[0]
    train_only = {**msg.config, "eval_personalized": False, "eval_received": False}
    reply = algo.local_update(1, dataclasses.replace(msg, config=train_only), ctx)
    stepped = {split_step_key(k)[0] for k in reply.metrics if split_step_key(k)[1] is not None}
    expected = [("train/step_", "train/loss", STEPS)]
    if name == "feddpa":
        expected.append(("train/local_step_", "train/local_loss", LOCAL_STEPS))
    assert stepped == {f"{p}{m}" for p, _, _ in expected for m in ("loss", "tokens", "lr")}
    for prefix, round_loss, steps in expected:
        losses, tokens, lrs = _per_step(reply.metrics, prefix, steps)
        assert lrs == [msg.config["lr"]] * steps
        assert all(t > 0 for t in tokens)
        mean = sum(v * t for v, t in zip(losses, tokens, strict=True)) / sum(tokens)
        assert reply.metrics[round_loss] == pytest.approx(mean, rel=1e-12)
    assert reply.metrics["train/tokens"] == sum(_per_step(reply.metrics, "train/step_", STEPS)[1])
    assert step_key("train/step_loss", STEPS + 1) not in reply.metrics
