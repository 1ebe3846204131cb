"""What every process that runs an algorithm builds first: the backbone, its tokenizer, and the
algorithm with its adapters installed on the backbone.

The embedded engine, Flower's ServerApp and ClientApp, and the routing analysis all start with
:func:`build_runtime`; the server then calls ``runtime.algo.setup(runtime.model)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.base import Algorithm
from fedamole.config import Config
from fedamole.models import load_model_and_tokenizer

__all__ = ["Runtime", "build_runtime", "set_threads"]

log = logging.getLogger(__name__)


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
    ``run.seed``), with torch using ``run.threads`` CPU threads (:func:`set_threads`)."""
    set_threads(cfg.run.threads)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device, seed=cfg.run.seed
    )
    algo = get_algorithm(cfg.federation.algorithm)(cfg)
    return Runtime(algo.prepare_model(model), tokenizer, algo)


def set_threads(threads: int | None) -> int:
    """Give torch ``threads`` CPU threads; ``None`` keeps ``OMP_NUM_THREADS`` or torch's default.

    A process that takes every core while another does the same makes both crawl (their threads
    spin against each other: a client-round took 6-9 minutes instead of 30-60 s on 2 busy
    cores); ``run.threads = 1`` per run, or ``fedamole sweep --jobs N`` (a fair share each),
    avoids it. Returns the number in use.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    log.debug(
        "torch uses %d CPU thread(s) (OMP_NUM_THREADS=%s)", used, os.environ.get("OMP_NUM_THREADS")
    )
    return used
