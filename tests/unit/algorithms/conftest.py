"""Fixtures for the LoRA baseline tests: the smoke config per algorithm, a tiny LoRA'd model."""

from __future__ import annotations

import pytest

from fedamole.algorithms import get_algorithm
from fedamole.data import load_federated_data
from fedamole.models import load_model_and_tokenizer


@pytest.fixture
def make_algo(smoke):
    """``make_algo(name, **overrides)``: (algorithm, prepared tiny model, tokenizer), set up."""

    def build(name: str, **overrides):
        cfg = smoke.replace(**{"federation.algorithm": name, **overrides})
        model, tokenizer = load_model_and_tokenizer(
            cfg.model.name, dtype="float32", device="cpu", seed=cfg.run.seed
        )
        algo = get_algorithm(name)(cfg)
        model = algo.prepare_model(model)
        if algo.observes_partition:  # as the engines do: the partition before setup
            algo.observe_partition(load_federated_data(cfg).client_categories())
        algo.setup(model)
        return algo, model, tokenizer

    return build
