"""SecAgg+ on the Flower engine, the protocol alone: Flower's workflow and client mod, driven by
:class:`~fedamole.engines.flower.secagg.SecureAggregation` over an in-process Grid whose clients
hold made-up vectors. The server gets the mean within the quantization bound, and nothing it
receives is one client's vector."""

from __future__ import annotations

import numpy as np
import pytest
import tomli_w
import torch

pytest.importorskip("flwr", reason="the Flower engine needs `make install-flower`")

from flwr.app import ConfigRecord, RecordDict
from flwr.common import bytes_to_ndarray

from fedamole.engines.flower.client_app import SETUP_KEY
from fedamole.engines.flower.secagg import (
    SECAGG_KEY,
    SecureAggregation,
    held_of,
    hold_back,
)
from fedamole.federated.messages import ClientMessage

from .flower_grid import FakeGrid

pytestmark = pytest.mark.flower

BASE = 1000
SHAPES = {"token_proj:m0": (4, 16), "token_proj:m1": (4, 8)}


class RecordingGrid(FakeGrid):
    """A FakeGrid that also keeps every reply the server receives."""

    def __init__(self, num_nodes: int):
        super().__init__(num_nodes, base=BASE)
        self.replies = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies


def _vectors(n: int, seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        c: {k: 0.3 * torch.randn(shape, generator=gen) for k, shape in SHAPES.items()}
        for c in range(n)
    }


def _aggregate(cfg, vectors, counts, *, grid=None):
    """Hold each client's vectors back as its ``train`` handler does, then run SecAgg+; returns
    the outcomes and the grid."""
    grid = grid or RecordingGrid(len(vectors))
    setup = ConfigRecord({"config": tomli_w.dumps(cfg.to_dict())})
    outcomes, held = {}, {}
    for client, tensors in vectors.items():
        context = grid.contexts[BASE + client]
        context.state.config_records[SETUP_KEY] = setup
        extra = {"experts:m0:A": torch.ones(2, 3)}  # a kind that stays in the clear
        update = ClientMessage(1, client, {**tensors, **extra}, {"num_examples": counts[client]})
        clear, record = hold_back(context, update, ("token_proj",))
        assert set(clear.tensors) == set(extra)  # the held-back kinds leave the reply
        held[client] = held_of(RecordDict({SECAGG_KEY: record}))
        outcomes[client] = clear
    SecureAggregation(cfg).complete(grid, 1, outcomes, held, {c: BASE + c for c in vectors})
    return outcomes, grid


def _cfg(smoke, n, **overrides):
    return smoke.replace(
        **{"federation.num_clients": n, "flower.secagg": "secaggplus", **overrides}
    )


def test_mean_within_the_quantization_bound_unweighted(smoke):
    """Unweighted, every client scales by d = 1 exactly, so each entry of the mean is within
    n * (2c/Q) / n = 2c/Q of the true mean: each client's stochastic rounding is off by less
    than one level (2c/Q), and the server divides the sum by n."""
    cfg = _cfg(smoke, 4, **{"mole.num_experts": 4})
    vectors = _vectors(4)
    outcomes, _ = _aggregate(cfg, vectors, dict.fromkeys(range(4), 10))
    s = cfg.flower.secaggplus
    bound = 2 * s.clipping_range / s.quantization_range
    for key in SHAPES:
        true = torch.stack([v[key].double() for v in vectors.values()]).mean(0)
        for client in vectors:
            got = outcomes[client].tensors[key]
            assert got.dtype == torch.float32 and got.shape == true.shape
            err = (got.double() - true).abs().max().item()
            assert err <= bound + 1e-7 * true.abs().max().item(), (key, err, bound)
            assert torch.equal(got, outcomes[0].tensors[key])  # every client gets the same mean
    assert bound == pytest.approx(4.77e-7, rel=1e-2)


def test_coarse_quantization_breaks_a_tighter_bound(smoke):
    """The bound is not vacuous: with 2**10 levels the error is visibly larger than the default
    bound, yet within its own 2c/Q."""
    cfg = _cfg(smoke, 3, **{"flower.secaggplus.quantization_range": 2**10})
    vectors = _vectors(3, seed=1)
    outcomes, _ = _aggregate(cfg, vectors, dict.fromkeys(range(3), 1))
    key = "token_proj:m0"
    true = torch.stack([v[key].double() for v in vectors.values()]).mean(0)
    err = (outcomes[0].tensors[key].double() - true).abs().max().item()
    assert 1e-4 < err <= 2 * 4.0 / 2**10


def test_weighted_mean_within_its_bound(smoke):
    """Weighted by examples: client i scales by d_i = round(w_i / max_w * Q) / Q (the server
    sets max_w to the largest weight), so the server's result sum(d_i p_i + e_i) / D, with
    D = sum(d_i) and |e_i| < 2c/Q, is within n * 2c / (Q * D) of the d-weighted mean, which is
    within n * max|p| / (Q * D) of the w-weighted mean (|d_i - w_i/max_w| <= 1/(2Q))."""
    cfg = _cfg(smoke, 3, **{"federation.weighting": "examples"})
    vectors, counts = _vectors(3, seed=2), {0: 7, 1: 30, 2: 101}
    outcomes, _ = _aggregate(cfg, vectors, counts)
    s = cfg.flower.secaggplus
    q, c = s.quantization_range, s.clipping_range
    d = [round(counts[i] / max(counts.values()) * q) / q for i in range(3)]
    w = torch.tensor([float(counts[i]) for i in range(3)], dtype=torch.float64)
    for key in SHAPES:
        stacked = torch.stack([vectors[i][key].double() for i in range(3)])  # (n, *shape)
        true = torch.tensordot(w / w.sum(), stacked, dims=1)
        bound = 3 * (2 * c + stacked.abs().max().item()) / (q * sum(d))
        err = (outcomes[1].tensors[key].double() - true).abs().max().item()
        assert err <= bound, (key, err, bound)
        unweighted = stacked.mean(0)
        assert (outcomes[1].tensors[key].double() - unweighted).abs().max() > 100 * bound


def test_server_never_sees_an_individual_vector(smoke):
    """Everything the server receives: the masked vectors (Flower's ``masked_params``, one per
    client) look nothing like the clients' quantized vectors (masks spread them over the whole
    modulus, while a true entry lies in [0, Q]), no reply holds a client's float vector, and
    yet their sum unmasks to the mean."""
    cfg = _cfg(smoke, 3)
    vectors = _vectors(3, seed=3)
    outcomes, grid = _aggregate(cfg, vectors, dict.fromkeys(range(3), 1))
    s = cfg.flower.secaggplus
    q, c, m = s.quantization_range, s.clipping_range, s.modulus_range
    masked = {}
    for reply in grid.replies:
        assert not reply.has_error(), reply.error
        configs = reply.content.config_records["secaggplus_configs"]
        if "masked_params" in configs:
            masked[reply.metadata.src_node_id] = [
                bytes_to_ndarray(b) for b in configs["masked_params"]
            ]
        for record in reply.content.array_records.values():  # the mod empties them all
            assert len(record) == 0
    assert sorted(masked) == [BASE, BASE + 1, BASE + 2]
    for node, arrays in masked.items():
        vecs = vectors[node - BASE]
        for key, arr in zip(sorted(SHAPES), arrays[1:], strict=True):  # [weight, *vectors]
            assert arr.shape == SHAPES[key]
            quantized = (vecs[key].double().numpy() + c) * q / (2 * c)  # before rounding
            assert np.mean(np.abs(arr - quantized) <= 1) < 0.01  # not the client's vector
            assert np.mean((arr >= 0) & (arr <= q)) < 0.05  # spread over [0, m): masked
            assert arr.min() >= 0 and arr.max() < m
    total = sum(sum(v[k].sum().item() for k in SHAPES) for v in vectors.values())
    mean = sum(outcomes[0].tensors[k].double().sum().item() for k in SHAPES)
    assert mean == pytest.approx(total / 3, abs=1e-4)


def test_too_few_holders_fail_without_a_sum(smoke):
    """Two clients hold vectors in a federation of three: a secure sum of two hides nothing, so
    both fail the round and nothing is exchanged."""
    cfg = _cfg(smoke, 3)
    grid = RecordingGrid(3)
    vectors = {c: v for c, v in _vectors(3).items() if c < 2}
    outcomes, _ = _aggregate(cfg, vectors, dict.fromkeys(range(2), 1), grid=grid)
    assert all(isinstance(o, RuntimeError) for o in outcomes.values())
    assert "needs 3 clients and only 2 replied" in str(outcomes[0])
    assert not grid.sent


def test_a_client_beyond_the_clipping_range_leaves_and_the_rest_is_summed(smoke):
    """A client whose values exceed ``clipping_range`` refuses (Flower would clip them); the
    protocol recovers its masks from the others' shares, and the mean is over the rest."""
    cfg = _cfg(smoke, 4, **{"mole.num_experts": 4})
    vectors = _vectors(4, seed=4)
    vectors[3]["token_proj:m1"][0, 0] = 5.0  # beyond +-4
    outcomes, _ = _aggregate(cfg, vectors, dict.fromkeys(range(4), 1))
    assert isinstance(outcomes[3], RuntimeError)
    assert "clipping_range" in str(outcomes[3])
    key = "token_proj:m0"
    true = torch.stack([vectors[c][key].double() for c in range(3)]).mean(0)
    err = (outcomes[0].tensors[key].double() - true).abs().max().item()
    assert err <= 2 * 4.0 / 2**24 + 1e-9
