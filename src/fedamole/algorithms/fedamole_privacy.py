"""FedAMoLE's protection of the uploaded RSEA statistics (``federation.privacy``; docs/privacy.md).

- ``"paper"``: the reference's noise heuristic (:mod:`fedamole.federated.privacy`), no guarantee.
- ``privacy.updates = "gaussian"``: client-level DP for the uploaded weights on the server
  (:func:`private_fold`, :mod:`fedamole.federated.update_dp`).
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

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedamole.algorithms.base import ClientContext, client_seed
from fedamole.config import Config
from fedamole.federated.accounting import Accountant, noise_for_epsilon
from fedamole.federated.expert_bank import ExpertBank
from fedamole.federated.gaussian import noisy_module_stats
from fedamole.federated.messages import pack_modules, unpack_modules
from fedamole.federated.privacy import NormClipper, privatize
from fedamole.federated.update_dp import UpdatePrivacy
from fedamole.mole import ExampleStats, ModuleState, ModuleStats

__all__ = [
    "STATE_KEY",
    "gaussian_stats",
    "paper_noise",
    "privacy_metrics",
    "private_fold",
    "stats_noise_multiplier",
    "update_privacy",
]

log = logging.getLogger(__name__)

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
    if cfg.privacy.delta >= 1 / m and not ctx.cache.get("delta_warned"):
        ctx.cache["delta_warned"] = True
        log.warning(
            "client %d: privacy.delta (%g) >= 1 / its %d embedding examples: a delta that large "
            "allows releasing one example outright; lower privacy.delta (docs/privacy.md)",
            ctx.client_id,
            cfg.privacy.delta,
            m,
        )
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


def update_privacy(cfg: Config) -> UpdatePrivacy | None:
    """The server's update DP (one upload per round ``1..R-1``), or ``None`` without it."""
    if cfg.privacy.updates != "gaussian":
        return None
    return UpdatePrivacy(cfg, releases=stats_releases(cfg))


def private_fold(
    dp: UpdatePrivacy,
    bank: ExpertBank,
    uploads: Mapping[int, Mapping[str, ModuleState]],
    received: Callable[[int], dict[str, ModuleState]],
    rnd: int,
) -> dict[str, float]:
    """:meth:`ExpertBank.fold` under client-level DP (:mod:`fedamole.federated.update_dp`).

    Each client's update (every tensor it uploads, against what it received) is clipped
    jointly; after the means, each expert gets noise ``z C / m`` for its ``m`` uploading
    holders, the shared expert and the token projection ``z C / M`` for the ``M`` uploading
    clients. One release per uploading client is accounted.

    Args:
        received: client -> the modules it was sent this round (the bank before folding).

    Returns:
        The round's ``dp/...`` server metrics (noise standard deviations, group sizes, epsilon).
    """
    clipped, norms = {}, []
    for c in sorted(uploads):
        ref = {k: v for k, v in pack_modules(received(c)).items() if not k.startswith("ids:")}
        tensors, norm = dp.clip(pack_modules(uploads[c]), ref)
        clipped[c], norms = unpack_modules(tensors), [*norms, norm]
    bank.fold(clipped)
    gen, everyone, sizes = dp.generator(rnd), len(clipped), [len(clipped)]
    for name in sorted(bank.modules):
        st = bank.modules[name]
        holders = Counter(int(e) for up in clipped.values() for e in up[name].expert_ids)
        a, b = st.lora_A.clone(), st.lora_B.clone()
        gate = None if st.gate is None else st.gate.clone()
        for e, m in sorted(holders.items()):
            a[e], b[e] = dp.noise(a[e], m, gen), dp.noise(b[e], m, gen)
            if gate is not None:
                gate[e] = dp.noise(gate[e], m, gen)
            sizes.append(m)
        shared = {}
        if st.shared_A is not None and st.shared_B is not None:
            shared = {
                "shared_A": dp.noise(st.shared_A, everyone, gen),
                "shared_B": dp.noise(st.shared_B, everyone, gen),
            }
        token_proj = dp.noise(st.token_proj, everyone, gen)
        bank.modules[name] = replace(
            st, lora_A=a, lora_B=b, gate=gate, token_proj=token_proj, **shared
        )
    dp.step(sorted(clipped), sizes, norms)
    return dict(dp.round_info)
