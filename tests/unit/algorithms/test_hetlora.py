"""HetLoRA's server rule (truncation, zero-padding, norm weights: hand computations), the tail it
regularizes, and rank self-pruning."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.hetlora import norm_weighted_average, tail_start, upload_rank
from fedamole.algorithms.lora_ranks import pad
from fedamole.federated.messages import ClientMessage
from fedamole.models import load_model_and_tokenizer

MODULE = "model.layers.0.self_attn.q_proj"


def _algo(smoke, ranks=(2, 4, 3), **overrides):
    cfg = smoke.replace(
        **{"federation.algorithm": "hetlora", "baselines.ranks.values": list(ranks), **overrides}
    )
    model, _ = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu", seed=0)
    algo = get_algorithm("hetlora")(cfg)
    algo.setup(algo.prepare_model(model))
    return algo


def test_norm_weighted_average_equals_a_hand_computation():
    a1, b1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0], [0.0]])  # rank 1: ||B A|| = 3
    a2 = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    b2 = torch.tensor([[0.5, 0.0], [0.0, 0.0]])  # rank 2: B A = [[0, 1], [0, 0]], norm 1
    uploads = [{"lora_A:m": a1, "lora_B:m": b1}, {"lora_A:m": a2, "lora_B:m": b2}]
    got = norm_weighted_average([pad(u, 2) for u in uploads])
    # weights 3/4 and 1/4; client 1's missing second component counts as zero
    torch.testing.assert_close(got["lora_A:m"], torch.tensor([[0.75, 0.5], [0.25, 0.25]]))
    torch.testing.assert_close(got["lora_B:m"], torch.tensor([[2.375, 0.0], [0.0, 0.0]]))
    zero = [{"lora_A:m": a1, "lora_B:m": torch.zeros(2, 1)}] * 2
    torch.testing.assert_close(norm_weighted_average(zero)["lora_A:m"], a1)  # uniform


def test_download_truncates_upload_pads_and_ranks_only_shrink(smoke):
    algo = _algo(smoke)
    sent = algo.configure_round(0)
    assert [upload_rank(sent[c].tensors) for c in range(3)] == [2, 4, 3]
    for c in range(3):
        for key, value in sent[c].tensors.items():
            whole = algo.global_state[key]
            own = (
                whole[: value.shape[0]] if key.startswith("lora_A") else whole[:, : value.shape[1]]
            )
            assert torch.equal(value, own), key
    gen = torch.Generator().manual_seed(0)

    def upload(client, rank):
        tensors = {
            k: torch.randn(pad({k: v}, 4)[k].shape, generator=gen)
            for k, v in sent[1].tensors.items()
        }
        tensors = {
            k: (v[:rank] if k.startswith("lora_A") else v[:, :rank]) for k, v in tensors.items()
        }
        return ClientMessage(1, client, tensors, {"num_examples": 5}, {})

    updates = {0: upload(0, 2), 1: upload(1, 3), 2: upload(2, 4)}  # client 2 cannot grow
    summary = algo.aggregate(1, updates)
    assert summary.accepted == (0, 1) and "can only shrink" in summary.rejected[2]
    assert algo.ranks == [2, 3, 3]  # client 1 pruned 4 -> 3; client 2 keeps its last rank
    a, b = f"lora_A:{MODULE}", f"lora_B:{MODULE}"
    padded = [pad(updates[c].tensors, 4) for c in (0, 1)]
    norms = [torch.linalg.matrix_norm(u[b].double() @ u[a].double()) for u in padded]
    by_hand = sum(n / sum(norms) * u[a].double() for n, u in zip(norms, padded, strict=True))
    torch.testing.assert_close(algo.global_state[a], by_hand.float())
    assert [upload_rank(m.tensors) for m in algo.configure_round(2).values()] == [2, 3, 3]


def test_tail_start_keeps_one_component_and_never_prunes_to_zero():
    assert [tail_start(r, 0.9) for r in (1, 2, 8, 16, 40)] == [1, 1, 7, 14, 36]
    assert [tail_start(r, 0.5) for r in (2, 3, 8)] == [1, 1, 4]
    assert tail_start(8, 1.0) == 7


def test_state_round_trip_keeps_the_shrunk_ranks_and_refuses_other_initial_ones(smoke):
    algo = _algo(smoke)
    algo.configure_round(0)
    algo.ranks = [2, 3, 3]
    other = _algo(smoke)
    other.load_state_dict(algo.state_dict())
    assert other.ranks == [2, 3, 3] and other.initial_ranks == [2, 4, 3]
    changed = _algo(smoke, ranks=(2, 4, 4))
    with pytest.raises(ValueError, match=r"initial client ranks \[2, 4, 3\] differ"):
        changed.load_state_dict(algo.state_dict())
