"""FedAMoLE's server store: per-expert averaging among holders, copies per client, checkpoints."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from fedamole.config import MoLEConfig
from fedamole.federated.assignment import Assignment
from fedamole.federated.expert_bank import ExpertBank

CFG = MoLEConfig(
    num_experts=3,
    clients_per_expert=2,
    min_experts_per_client=2,
    max_experts_per_client=3,
    top_k=1,
    rank=2,
)
SHAPES = {"m": (4, 5)}
# expert 0: clients 0, 1; expert 1: clients 1, 2; expert 2: clients 0, 2
ASSIGN = Assignment({"m": np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=bool)})


def _bank() -> ExpertBank:
    return ExpertBank.initial(SHAPES, CFG, generator=torch.Generator().manual_seed(0))


def _filled(bank: ExpertBank, client: int, value: float):
    """The client's share of the bank with every tensor set to ``value``."""
    st = bank.for_client(ASSIGN, client)["m"]
    fill = {k: torch.full_like(getattr(st, k), value) for k in ("lora_A", "lora_B", "token_proj")}
    fill |= {k: torch.full_like(getattr(st, k), value) for k in ("shared_A", "shared_B")}
    return {"m": replace(st, **fill)}


def test_for_client_selects_the_assigned_experts_as_copies():
    bank = _bank()
    share = bank.for_client(ASSIGN, 1)["m"]
    assert share.expert_ids.tolist() == [0, 1]
    assert torch.equal(share.lora_A, bank.modules["m"].lora_A[[0, 1]])
    share.lora_A.add_(1.0)
    share.token_proj.add_(1.0)
    assert not torch.equal(share.lora_A, bank.modules["m"].lora_A[[0, 1]])  # no aliasing
    assert not torch.equal(share.token_proj, bank.modules["m"].token_proj)


def test_fold_averages_each_expert_over_its_holders_only():
    bank = _bank()
    uploads = {0: _filled(bank, 0, 1.0), 1: _filled(bank, 1, 2.0), 2: _filled(bank, 2, 6.0)}
    bank.fold(uploads)
    st = bank.modules["m"]
    # expert 0: (1 + 2) / 2; expert 1: (2 + 6) / 2; expert 2: (1 + 6) / 2
    for e, want in enumerate((1.5, 4.0, 3.5)):
        assert torch.allclose(st.lora_A[e], torch.full_like(st.lora_A[e], want))
        assert torch.allclose(st.lora_B[e], torch.full_like(st.lora_B[e], want))
    assert torch.allclose(st.token_proj, torch.full_like(st.token_proj, 3.0))  # all clients
    assert torch.allclose(st.shared_A, torch.full_like(st.shared_A, 3.0))


def test_an_expert_without_a_surviving_holder_keeps_its_weights():
    bank = _bank()
    before = bank.modules["m"].lora_A[1].clone()
    bank.fold({0: _filled(bank, 0, 1.0)})  # client 0 holds experts 0 and 2
    assert torch.equal(bank.modules["m"].lora_A[1], before)
    assert torch.allclose(bank.modules["m"].lora_A[0], torch.ones_like(before))


def test_embeddings_and_affinities():
    bank = _bank()
    assert bank.affinities(3) is None  # nobody uploaded yet
    tok = {c: torch.full((2,), float(c)) for c in range(3)}
    experts = {0: torch.tensor([[1.0, 0], [3.0, 0]]), 2: torch.tensor([[5.0, 0], [7.0, 0]])}
    bank.fold_embeddings({c: {"m": (tok[c], experts[c])} for c in (0, 2)}, ASSIGN, 3)
    emb = bank.expert_emb["m"]
    assert emb[:, 0].tolist() == [1.0, 5.0, 5.0]  # expert 2: mean of client 0's 3 and 2's 7
    assert torch.equal(bank.token_emb[1]["m"], torch.full((2,), 1.0))  # stand-in: mean of 0, 2
    probs = bank.affinities(3)["m"]
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0)


def test_checkpoint_layout_round_trips():
    bank = _bank()
    state = bank.state_dict()
    assert set(state["bank"]["m"]) == {"A", "B", "token_proj", "shared_A", "shared_B"}
    again = ExpertBank.from_state_dict(state)
    for key in ("lora_A", "lora_B", "token_proj", "shared_A", "shared_B"):
        assert torch.equal(getattr(again.modules["m"], key), getattr(bank.modules["m"], key))
