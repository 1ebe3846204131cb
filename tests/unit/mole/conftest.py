"""Shared fixtures for the HMoLE layer tests: tiny models, configs, random adapter states."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedamole.config import MoLEConfig
from fedamole.mole import ModuleState, get_mole_state, set_mole_state


@pytest.fixture
def cfg() -> MoLEConfig:
    """A small MoLE config: 2 held experts, top-2, rank 4, no dropout (deterministic forwards)."""
    return MoLEConfig(num_experts=6, rank=4, dropout=0.0)


def randomize_state(state: ModuleState, gen: torch.Generator) -> ModuleState:
    """The same state with every tensor (B included) replaced by random values of its shape."""
    changes = {
        f.name: torch.randn(value.shape, generator=gen) * 0.3
        for f in dataclasses.fields(state)
        if f.name != "expert_ids" and (value := getattr(state, f.name)) is not None
    }
    return dataclasses.replace(state, **changes)


@pytest.fixture
def randomize():
    """``randomize(model, seed)``: give every MoLE tensor of ``model`` random non-zero values."""

    def apply(model: torch.nn.Module, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        states = {n: randomize_state(s, gen) for n, s in get_mole_state(model).items()}
        set_mole_state(model, states)

    return apply
