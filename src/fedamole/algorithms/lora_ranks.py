"""Heterogeneous LoRA ranks: each client's rank, and adapters of different ranks on one model
(docs/algorithm.md#heterogeneous-ranks).

- **Ranks.** :func:`client_ranks` gives client ``i`` its rank ``r_i`` from ``[baselines.ranks]``:
  explicit ``values``, or a distribution drawn from ``run.seed``. Every distribution but ``"homo"``
  measures ranks in FedAMoLE's units, so the two methods train comparable parameter counts: a
  FedAMoLE client holding the shared expert and ``m`` domain experts of rank ``mole.rank`` trains
  ``mole.rank * (1 + m)`` rank-one components per module. ``"budget"`` (the default) gives client
  ``i`` the ``m_i`` of a draw of FedAMoLE's round-0 architecture (the random assignment of
  :func:`~fedamole.federated.assignment.random_assignment`, ``m_i`` between
  ``mole.min_experts_per_client`` and ``mole.max_experts_per_client``, ``sum m_i = E k_c``), so the
  ranks sum to FedAMoLE's total; ``"random"`` draws ``m_i`` uniformly in those bounds;
  ``"heavy_tail"`` draws them with probability proportional to ``1 / (1 + m)^2``, most clients
  small, a few large; ``"homo"`` gives every client ``baselines.lora_rank``.
- **One model, many ranks.** Every client's adapter lives in one peft adapter of rank
  ``r_max = max_i r_i``: client ``i`` uses its first ``r_i`` components and keeps the rest zero.
  A zero component stays zero under training (the gradient of ``B[:, j]`` is a multiple of
  ``A[j]`` and that of ``A[j]`` of ``B[:, j]``), so the padded adapter computes and trains exactly
  as a rank-``r_i`` one once its scaling is ``alpha / r_i`` (:func:`rank_scaling`, peft's
  ``set_scale``). Only the first ``r_i`` components travel: :func:`truncate` before sending,
  :func:`pad` on arrival.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from fedamole.algorithms.lora_common import DEFAULT_ADAPTER, lora_layers, part_of
from fedamole.config import Config
from fedamole.federated.assignment import random_assignment

__all__ = ["client_ranks", "pad", "rank_scaling", "truncate"]


def client_ranks(cfg: Config) -> list[int]:
    """Each client's LoRA rank (see the module docstring); deterministic in ``run.seed``."""
    ranks, mole, n = cfg.baselines.ranks, cfg.mole, cfg.federation.num_clients
    if ranks.values:
        return [int(r) for r in ranks.values]
    if ranks.distribution == "homo":
        return [cfg.baselines.lora_rank] * n
    lo, hi = mole.min_experts_per_client, mole.max_experts_per_client
    rng = np.random.default_rng([cfg.run.seed, 0x5A4B])  # its own stream: no other draw moves it
    if ranks.distribution == "budget":
        held = random_assignment(
            mole.num_experts,
            n,
            rng=rng,
            per_expert=mole.clients_per_expert,
            min_per_client=lo,
            max_per_client=hi,
        )
        counts = held.sum(axis=0)
    elif ranks.distribution == "random":
        counts = rng.integers(lo, hi, endpoint=True, size=n)
    else:  # heavy_tail
        options = np.arange(lo, hi + 1)
        weights = 1.0 / (1.0 + options) ** 2
        counts = rng.choice(options, size=n, p=weights / weights.sum())
    return [int(mole.rank * (1 + m)) for m in counts]


def truncate(state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The first ``rank`` components of an adapter state: rows of A, columns of B."""
    return {
        k: (v[:rank] if part_of(k) == "lora_A" else v[:, :rank]).clone() for k, v in state.items()
    }


def pad(state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """An adapter state of rank ``<= rank`` zero-padded to ``rank`` components.

    Raises:
        ValueError: a tensor holds more than ``rank`` components.
    """
    out = {}
    for key, value in state.items():
        have = value.shape[0] if part_of(key) == "lora_A" else value.shape[1]
        if have > rank:
            raise ValueError(f"{key}: {have} components, more than the adapter's rank {rank}")
        if part_of(key) == "lora_A":
            out[key] = torch.cat([value, value.new_zeros(rank - have, value.shape[1])], dim=0)
        else:
            out[key] = torch.cat([value, value.new_zeros(value.shape[0], rank - have)], dim=1)
    return out


@contextmanager
def rank_scaling(model: nn.Module, rank: int, adapter: str = DEFAULT_ADAPTER) -> Iterator[None]:
    """The adapter scales as one of rank ``rank`` (``alpha / rank``) for the duration, though peft
    installed it with more components; peft's ``alpha / r_max`` is restored on exit."""
    layers = list(lora_layers(model).values())
    try:
        for layer in layers:
            layer.set_scale(adapter, layer.r[adapter] / rank)
        yield
    finally:
        for layer in layers:
            layer.set_scale(adapter, 1.0)
