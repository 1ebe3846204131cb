"""FedAMoLE's protection of the uploaded RSEA statistics (``federation.privacy``; docs/privacy.md).

- ``"paper"``: the reference's noise heuristic (:mod:`fedamole.federated.privacy`), no guarantee.
- ``"gaussian"``: the Gaussian mechanism with per-example clipping
  (:mod:`fedamole.federated.gaussian`) and an accountant per client
  (:mod:`fedamole.federated.accounting`). The client accounts for itself: it knows what it
  released. Its accountant's state (the releases so far) lives in the client's private state
  (``ctx.state``), which both engines checkpoint, so a resumed run continues the count exactly.
  Each round the client reports ``privacy/epsilon_stats`` (its epsilon so far),
  ``privacy/noise_multiplier_stats``, ``privacy/noise_std_stats`` (per uploaded coordinate) and
  ``privacy/clipped_stats`` (the fraction of its examples the bound clipped) in
  ``metrics.jsonl``.

The noise multiplier is either ``privacy.noise_multiplier`` or solved for ``privacy.epsilon``
over the run's releases: one per round ``1..R-1`` (sampling rate 1: every client uploads every
round). A client that misses rounds releases less, so its epsilon stays below the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedamole.algorithms.base import ClientContext, client_seed
from fedamole.config import Config
from fedamole.federated.accounting import Accountant, noise_for_epsilon
from fedamole.federated.gaussian import noisy_module_stats
from fedamole.federated.privacy import NormClipper, privatize
from fedamole.mole import ExampleStats, ModuleStats

__all__ = [
    "STATE_KEY",
    "gaussian_stats",
    "paper_noise",
    "privacy_metrics",
    "stats_noise_multiplier",
]

STATE_KEY = "dp_stats"
"""Where a client keeps its statistics accountant (:meth:`Accountant.state_dict`): ``ctx.state``."""


def stats_releases(cfg: Config) -> int:
    """Uploads of the statistics per client over the run: rounds ``1..R-1``."""
    return cfg.federation.rounds - 1


def stats_noise_multiplier(cfg: Config) -> float:
    """``privacy.noise_multiplier``, or the one solved for ``privacy.epsilon`` over the run."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    if p.epsilon is None:
        raise ValueError(
            "federation.privacy = 'gaussian' needs privacy.epsilon or noise_multiplier"
        )
    return noise_for_epsilon(p.epsilon, steps=stats_releases(cfg), delta=p.delta)


def _accountant(cfg: Config, ctx: ClientContext) -> Accountant:
    acc = Accountant(noise_multiplier=stats_noise_multiplier(cfg), delta=cfg.privacy.delta)
    if STATE_KEY in ctx.state:
        acc.load_state_dict(ctx.state[STATE_KEY])
    return acc


def privacy_metrics(cfg: Config, ctx: ClientContext) -> dict[str, float]:
    """The client's epsilon so far (a round without an upload reports it unchanged)."""
    acc = _accountant(cfg, ctx)
    return {
        "privacy/epsilon_stats": acc.epsilon,
        "privacy/noise_multiplier_stats": acc.noise_multiplier,
    }


def gaussian_stats(
    cfg: Config, ctx: ClientContext, rnd: int, rows: dict[str, ExampleStats]
) -> tuple[dict[str, ModuleStats], dict[str, float]]:
    """The statistics to upload under the Gaussian mechanism, one release accounted.

    Args:
        rows: the client's per-example statistics (:func:`~fedamole.mole.example_embedding_stats`).

    Returns:
        The uploaded statistics, and this round's ``privacy/...`` metrics.
    """
    acc = _accountant(cfg, ctx)
    rng = np.random.default_rng(client_seed(cfg.run.seed + 3, rnd, ctx.client_id))
    clip, z = cfg.privacy.clip, acc.noise_multiplier
    stats, clipped = noisy_module_stats(rows, clip=clip, noise_multiplier=z, rng=rng)
    acc.step()
    ctx.state[STATE_KEY] = acc.state_dict()
    m = next(iter(rows.values())).token.shape[0]
    return stats, {
        "privacy/epsilon_stats": acc.epsilon,
        "privacy/noise_multiplier_stats": z,
        "privacy/noise_std_stats": z * clip / m,
        "privacy/clipped_stats": clipped,
    }


def paper_noise(
    cfg: Config, ctx: ClientContext, rnd: int, stats: dict[str, ModuleStats]
) -> dict[str, ModuleStats]:
    """The reference's noise on every uploaded vector, clipped to the running clean maximum."""
    rng = np.random.default_rng(client_seed(cfg.run.seed + 2, rnd, ctx.client_id))
    clipper = NormClipper()
    if "clipper" in ctx.state:
        clipper.load_state_dict(ctx.state["clipper"])
    out: dict[str, Any] = {}
    for name, st in stats.items():
        vec = torch.cat([st.token[None], st.experts]).double().numpy()  # (1+n, r)
        clip = clipper.update(vec, key=name)
        noisy = privatize(vec, eta=cfg.federation.privacy_eta, rng=rng, clip_norm=clip)
        noisy_t = torch.from_numpy(noisy).to(st.token.dtype)
        out[name] = type(st)(**{**st.__dict__, "token": noisy_t[0], "experts": noisy_t[1:]})
    ctx.state["clipper"] = clipper.state_dict()
    return out
