"""FlexLoRA: heterogeneous ranks, the full-update aggregation and its SVD redistribution (hand
computations), and a padded adapter computing as one of the client's own rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.flexlora import full_updates, redistribute
from fedamole.algorithms.lora_common import install_lora, lora_state, set_lora_state
from fedamole.algorithms.lora_ranks import client_ranks, pad, rank_scaling, truncate
from fedamole.config import ConfigError
from fedamole.federated.messages import ClientMessage
from fedamole.models import load_model_and_tokenizer

IDS = torch.tensor([[0, 40, 41, 42, 10, 77, 120, 31, 9]])


def _flex(smoke, **overrides):
    return smoke.replace(**{"federation.algorithm": "flexlora", **overrides})


def _best_rank(matrix: np.ndarray, rank: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def test_full_update_and_redistribution_equal_a_hand_computation():
    rng = np.random.default_rng(0)
    alpha, ranks, weights = 16.0, [2, 3], [0.25, 0.75]
    bs = [rng.normal(size=(5, r)) for r in ranks]
    as_ = [rng.normal(size=(r, 4)) for r in ranks]
    uploads = [
        {"lora_A:m": torch.tensor(a, dtype=torch.float32), "lora_B:m": torch.tensor(b)}
        for a, b in zip(as_, bs, strict=True)
    ]
    by_hand = sum(
        w * alpha / r * (b.astype(np.float32).astype(np.float64) @ a.astype(np.float32))
        for w, r, a, b in zip(weights, ranks, as_, bs, strict=True)
    )
    delta = full_updates(uploads, ranks, weights, alpha)["m"]
    np.testing.assert_allclose(delta.numpy(), by_hand, rtol=1e-6)
    for rank in (1, 2, 3, 6):  # 6 > min(5, 4): the components beyond the matrix's rank are zero
        sent = redistribute({"m": delta}, rank, alpha)
        assert sent["lora_A:m"].shape == (rank, 4) and sent["lora_B:m"].shape == (5, rank)
        product = (alpha / rank) * (sent["lora_B:m"].double() @ sent["lora_A:m"].double())
        np.testing.assert_allclose(product.numpy(), _best_rank(by_hand, rank), atol=1e-5)
        # Eckart-Young: the error is the norm of the dropped singular values
        s = np.linalg.svd(by_hand, compute_uv=False)
        error = np.linalg.norm(product.numpy() - by_hand)
        assert error == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), abs=1e-5)


def test_the_server_sends_each_client_its_rank_of_the_weighted_update(smoke):
    cfg = _flex(smoke, **{"baselines.ranks.values": [2, 4, 3], "federation.weighting": "examples"})
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("flexlora")(cfg)
    algo.setup(algo.prepare_model(model))
    first = algo.configure_round(0)
    assert {
        c: first[c].tensors["lora_A:model.layers.0.self_attn.q_proj"].shape[0] for c in first
    } == {
        0: 2,
        1: 4,
        2: 3,
    }
    gen = torch.Generator().manual_seed(1)
    uploads, counts = {}, {0: 10, 1: 30, 2: 60}
    for c, msg in first.items():
        tensors = {k: torch.randn(v.shape, generator=gen) for k, v in msg.tensors.items()}
        uploads[c] = ClientMessage(1, c, tensors, {"num_examples": counts[c]}, {})
    summary = algo.aggregate(1, uploads)
    assert summary.accepted == (0, 1, 2)
    sent = algo.configure_round(2)
    module = "model.layers.1.self_attn.v_proj"
    by_hand = sum(
        counts[c]
        / 100
        * 16.0
        / r
        * (
            uploads[c].tensors[f"lora_B:{module}"].double()
            @ uploads[c].tensors[f"lora_A:{module}"].double()
        )
        for c, r in enumerate((2, 4, 3))
    ).numpy()
    for c, r in enumerate((2, 4, 3)):
        t = sent[c].tensors
        product = 16.0 / r * (t[f"lora_B:{module}"].double() @ t[f"lora_A:{module}"].double())
        np.testing.assert_allclose(product.numpy(), _best_rank(by_hand, r), atol=1e-4)
    assert algo.configure_round(3)[0].tensors == {}  # nothing aggregated since: nothing sent


def test_a_wrong_rank_upload_is_rejected(smoke):
    cfg = _flex(smoke, **{"baselines.ranks.values": [2, 4, 3]})
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("flexlora")(cfg)
    algo.setup(algo.prepare_model(model))
    msgs = algo.configure_round(0)
    wrong = dict(msgs[1].tensors)  # rank 4: client 1's shapes, not client 0's rank 2
    summary = algo.aggregate(1, {0: ClientMessage(1, 0, wrong, {"num_examples": 1}, {})})
    assert summary.accepted == () and 0 in summary.rejected


def test_a_padded_adapter_computes_as_one_of_the_clients_rank(smoke):
    cfg = _flex(smoke, **{"baselines.ranks.values": [2, 5, 3]})
    wide, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("flexlora")(cfg)
    wide = algo.prepare_model(wide)
    gen = torch.Generator().manual_seed(3)
    own = {k: torch.randn(v.shape, generator=gen) for k, v in truncate(lora_state(wide), 2).items()}
    set_lora_state(wide, pad(own, 5))
    narrow, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    narrow = install_lora(narrow, cfg.baselines.model_copy(update={"lora_rank": 2}))
    set_lora_state(narrow, own)
    wide.eval(), narrow.eval()  # no dropout
    with torch.no_grad():
        expected = narrow(input_ids=IDS).logits
        with rank_scaling(wide, 2):
            got = wide(input_ids=IDS).logits
        unscaled = wide(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(unscaled, expected, atol=1e-5)  # peft's alpha / 5 is restored


def test_pad_and_truncate_invert_each_other_and_pad_refuses_to_cut():
    state = {"lora_A:m": torch.randn(3, 4), "lora_B:m": torch.randn(5, 3)}
    padded = pad(state, 6)
    assert padded["lora_A:m"].shape == (6, 4) and not padded["lora_A:m"][3:].any()
    assert padded["lora_B:m"].shape == (5, 6) and not padded["lora_B:m"][:, 3:].any()
    assert all(torch.equal(truncate(padded, 3)[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="more than the adapter's rank 2"):
        pad(state, 2)


def test_client_ranks_follow_the_distribution(smoke):
    cfg = _flex(smoke, **{"federation.num_clients": 6, "mole.num_experts": 8})
    mole = cfg.mole
    budget = client_ranks(cfg)
    assert budget == client_ranks(cfg)  # deterministic
    # FedAMoLE's total: every client's shared expert plus E * k_c expert slots
    assert sum(budget) == mole.rank * (6 + mole.num_experts * mole.clients_per_expert)
    lo, hi = (
        mole.rank * (1 + m) for m in (mole.min_experts_per_client, mole.max_experts_per_client)
    )
    for kind in ("budget", "random", "heavy_tail"):
        ranks = client_ranks(cfg.replace(**{"baselines.ranks.distribution": kind}))
        assert len(ranks) == 6 and all(lo <= r <= hi and r % mole.rank == 0 for r in ranks), kind
    homo = cfg.replace(**{"baselines.ranks.distribution": "homo"})
    assert client_ranks(homo) == [cfg.baselines.lora_rank] * 6
    listed = cfg.replace(**{"baselines.ranks.values": [1, 2, 3, 4, 5, 6]})
    assert client_ranks(listed) == [1, 2, 3, 4, 5, 6]


def test_rank_settings_are_validated(smoke):
    with pytest.raises(ConfigError, match=r"baselines.ranks.values. has 2 ranks for 3 clients"):
        _flex(smoke, **{"baselines.ranks.values": [4, 8]})
    with pytest.raises(ConfigError, match="baselines.ranks.distribution"):
        _flex(smoke, **{"mole.min_experts_per_client": 9, "mole.max_experts_per_client": 9})
    _flex(
        smoke,
        **{
            "baselines.ranks.distribution": "homo",
            "mole.min_experts_per_client": 9,
            "mole.max_experts_per_client": 9,
        },
    )  # homo ignores [mole]


def test_a_checkpoint_of_other_ranks_is_refused(smoke):
    cfg = _flex(smoke, **{"baselines.ranks.values": [2, 4, 3]})
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("flexlora")(cfg)
    algo.setup(algo.prepare_model(model))
    algo.configure_round(0)
    other = get_algorithm("flexlora")(cfg.replace(**{"baselines.ranks.values": [2, 4, 4]}))
    with pytest.raises(ValueError, match=r"client ranks \[2, 4, 3\] differ"):
        other.load_state_dict(algo.state_dict())
    same = get_algorithm("flexlora")(cfg)
    same.load_state_dict(algo.state_dict())
    assert all(
        torch.equal(same.client_states[c][k], v)
        for c, s in algo.client_states.items()
        for k, v in s.items()
    )
