"""The Gaussian mechanism on the uploaded RSEA statistics
(docs/privacy.md#the-gaussian-mechanism-on-the-statistics).

A client's upload is, per MoLE module, the mean token embedding and the mean embedding of every
expert it holds, over its ``m`` embedding examples. With ``federation.privacy = "gaussian"``:

1. every example ``i`` gives one row ``v_i``: its own token and expert embeddings of *every*
   module, concatenated (:func:`flatten_examples`);
2. each row is clipped to the public L2 bound ``C`` (``privacy.clip``), so one example moves the
   sum ``S = sum_i clip(v_i)`` by at most ``C`` (add-or-remove-one neighbours);
3. the client uploads ``(S + N(0, (z C)^2 I)) / m`` (:func:`gaussian_mean`): every coordinate
   of the uploaded means gets noise of standard deviation ``z C / m``.

``m`` is treated as public (it follows from the partition, ``data.embedding_ratio`` and
``data.embedding_cap``); dividing the noisy sum by it is post-processing. Under replace-one
neighbours the sensitivity of ``S`` is ``2 C``, and the same noise gives the epsilon of the
multiplier ``z / 2``. Each round's upload is one release per client; the accountant
(:mod:`fedamole.federated.accounting`) composes them.

Unlike the statistics without the mechanism, the means are over examples (each example's
token-weighted mean input, then averaged), not over all tokens: a per-token mean gives a long
example more weight than ``C`` bounds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedamole.federated.privacy import clip_to_norm
from fedamole.mole.stats import ExampleStats, ModuleStats

__all__ = ["flatten_examples", "gaussian_mean", "noisy_module_stats"]


def gaussian_mean(
    rows: np.ndarray, *, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Clip each row to ``clip``, average, add Gaussian noise of std ``noise_multiplier * clip /
    m``.

    Args:
        rows: ``(m, D)`` one row per example.
        clip: the public L2 bound of one row.
        noise_multiplier: noise standard deviation over the sum's sensitivity ``clip``.
        rng: the generator the noise is drawn from.

    Returns:
        ``(D,)`` the noisy mean, and the fraction of rows that were clipped.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"gaussian_mean needs rows (m, D) with m >= 1; got shape {rows.shape}")
    if not clip > 0 or not noise_multiplier > 0:
        raise ValueError(f"clip ({clip}) and noise_multiplier ({noise_multiplier}) must be > 0")
    m = rows.shape[0]
    clipped_fraction = float((np.linalg.norm(rows, axis=1) > clip).mean())
    total = clip_to_norm(rows, clip).sum(axis=0)  # (D,)
    noise = rng.normal(0.0, noise_multiplier * clip, size=total.shape)  # (D,)
    return (total + noise) / m, clipped_fraction


def flatten_examples(stats: Mapping[str, ExampleStats]) -> np.ndarray:
    """``(m, D)``: each example's token and expert embeddings of every module (sorted by name),
    concatenated; :func:`noisy_module_stats` undoes the layout."""
    parts = []
    for name in sorted(stats):
        st = stats[name]
        m = st.token.shape[0]
        parts += [st.token.numpy(), st.experts.reshape(m, -1).numpy()]  # (m, r), (m, n*r)
    return np.concatenate(parts, axis=1)


def noisy_module_stats(
    stats: Mapping[str, ExampleStats],
    *,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[dict[str, ModuleStats], float]:
    """The uploaded statistics of :func:`gaussian_mean` over :func:`flatten_examples`'s rows.

    Returns:
        ``{module name: ModuleStats}`` (float32, like the statistics without the mechanism;
        ``num_tokens`` is the number of examples), and the fraction of examples clipped.
    """
    rows = flatten_examples(stats)  # (m, D)
    mean, clipped = gaussian_mean(rows, clip=clip, noise_multiplier=noise_multiplier, rng=rng)
    out, at = {}, 0
    for name in sorted(stats):
        st = stats[name]
        m, n, r = st.experts.shape
        token = mean[at : at + r]  # (r,)
        experts = mean[at + r : at + r + n * r].reshape(n, r)  # (n, r)
        at += r + n * r
        out[name] = ModuleStats(
            token=torch.from_numpy(token).float(),
            experts=torch.from_numpy(experts).float(),
            expert_ids=st.expert_ids,
            num_tokens=m,
        )
    assert at == rows.shape[1]
    return out, clipped
