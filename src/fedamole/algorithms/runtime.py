"""What every process that runs an algorithm builds first: the backbone, its tokenizer, and the
algorithm with its adapters installed on the backbone.

The embedded engine, Flower's ServerApp and ClientApp, and the routing analysis all start with
:func:`build_runtime`; the server then calls ``runtime.algo.setup(runtime.model)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.base import Algorithm
from fedamole.config import Config
from fedamole.models import load_model_and_tokenizer

__all__ = ["Runtime", "build_runtime"]


@dataclass
class Runtime:
    """A prepared backbone and the algorithm that prepared it.

    Attributes:
        model: the backbone with the algorithm's adapters (or the algorithm's wrapper of it).
        tokenizer: the backbone's tokenizer (pad token set, left padding).
        algo: the algorithm object (server state not yet set up).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    algo: Algorithm


def build_runtime(cfg: Config) -> Runtime:
    """Load ``model.name`` and install ``federation.algorithm``'s adapters on it (seeded by
    ``run.seed``)."""
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device, seed=cfg.run.seed
    )
    algo = get_algorithm(cfg.federation.algorithm)(cfg)
    return Runtime(algo.prepare_model(model), tokenizer, algo)
