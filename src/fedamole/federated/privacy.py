"""Optional noise on the uploaded RSEA embeddings (docs/algorithm.md#privacy-noise).

Each uploaded mean embedding ``v`` in ``R^r`` (the mean token embedding and every mean expert
embedding) gets independent per-coordinate noise ``n_i = l_i * u_i`` with
``l_i ~ Gamma(shape=r, rate=eta)`` and ``u_i ~ U(-1, 1)``, so ``E|n_i| = r / (2 eta)`` and
``E[n_i^2] = r (r + 1) / (3 eta^2)``. The noisy vector is then rescaled by
``min(1, c_max / ||v + n||)``, where ``c_max`` is a running maximum of **clean** norms: clipping
bounds the norm the server sees without shrinking vectors the noise did not inflate.

**What this is not.** There is no formal privacy guarantee: no epsilon, no accountant, no
composition over rounds. The mechanism resembles metric (d_chi) privacy, but the noise direction is
not uniform on the sphere, and ``c_max`` itself is computed from private data. Treat it as the
reference's obfuscation heuristic, reproduced so its experiments (eta in {1, 50, 100}) can be run.

**Reference behaviour, and our fix.** The reference noises the final per-client mean and tracks
``c_max`` while accumulating batches: the first batch contributes the norm of its *mean*, every
later batch the norm of its *sum* (a bug: those norms grow with the batch size). We track norms of
mean vectors only (:class:`NormClipper` is fed the clean vectors that are uploaded, or per-batch
means). The reference keeps one ``c_max`` per vector row per module within one embedding pass;
:class:`NormClipper` keeps one scalar per key, so callers choose the granularity (e.g. one key per
module) and may keep it across rounds through ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["NormClipper", "clip_to_norm", "privatize", "sample_noise"]


def sample_noise(shape: tuple[int, ...], *, eta: float, rng: np.random.Generator) -> np.ndarray:
    """Noise ``l * u`` with ``l ~ Gamma(shape=r, rate=eta)``, ``u ~ U(-1, 1)``, ``r = shape[-1]``.

    Returns:
        float64 array of ``shape``.
    """
    if not eta > 0 or not np.isfinite(eta):
        raise ValueError(f"`privacy_eta` ({eta}) must be a finite positive number")
    r = shape[-1]
    magnitude = rng.gamma(shape=r, scale=1.0 / eta, size=shape)  # rate eta == scale 1/eta
    sign = rng.uniform(-1.0, 1.0, size=shape)
    return magnitude * sign


def clip_to_norm(v: np.ndarray, clip_norm: float | np.ndarray) -> np.ndarray:
    """Rescale each vector (last axis) by ``min(1, clip_norm / ||v||)``.

    Args:
        v: ``(..., r)`` vectors.
        clip_norm: a scalar or an array broadcastable to ``v.shape[:-1]``.

    Returns:
        ``(..., r)`` vectors with norms at most ``clip_norm`` (zero vectors stay zero).
    """
    norms = np.linalg.norm(v, axis=-1)  # (...)
    bound = np.broadcast_to(np.asarray(clip_norm, dtype=np.float64), norms.shape)
    scale = np.ones_like(norms)
    big = norms > bound
    scale[big] = bound[big] / norms[big]
    return v * scale[..., None]


def privatize(
    v: np.ndarray,
    *,
    eta: float,
    rng: np.random.Generator,
    clip_norm: float | np.ndarray | None = None,
) -> np.ndarray:
    """Add the module docstring's noise to embedding vectors, then optionally clip.

    Args:
        v: ``(..., r)`` clean vectors; every vector gets independent noise.
        eta: noise rate (larger is less noise; mean ``|noise| = r / (2 eta)``).
        rng: the generator all noise is drawn from.
        clip_norm: ``c_max`` (scalar or per-vector ``v.shape[:-1]``), usually from
            :meth:`NormClipper.update`; ``None`` skips clipping.

    Returns:
        ``(..., r)`` float64 noisy (and clipped) vectors.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(f"privatize needs vectors (..., r) with r >= 1; got shape {v.shape}")
    noisy = v + sample_noise(v.shape, eta=eta, rng=rng)
    return noisy if clip_norm is None else clip_to_norm(noisy, clip_norm)


class NormClipper:
    """Running maximum of clean L2 norms, one scalar per key (the reference's bug fixed).

    Example::

        clip = clipper.update(clean, key=module_name)  # clean: (..., r)
        sent = privatize(clean, eta=eta, rng=rng, clip_norm=clip)
    """

    def __init__(self) -> None:
        self._max: dict[str, float] = {}

    def update(self, clean: np.ndarray, *, key: str = "") -> float:
        """Fold the norms of ``clean`` ``(..., r)`` into ``key``'s maximum and return it."""
        clean = np.asarray(clean, dtype=np.float64)
        if clean.size and not np.isfinite(clean).all():
            raise ValueError(f"NormClipper.update({key!r}): clean vectors contain NaN or Inf")
        norm = float(np.linalg.norm(clean, axis=-1).max(initial=0.0))
        self._max[key] = max(self._max.get(key, 0.0), norm)
        return self._max[key]

    def max_norm(self, key: str = "") -> float | None:
        """The running maximum for ``key``, or ``None`` before its first update."""
        return self._max.get(key)

    def state_dict(self) -> dict[str, Any]:
        return {"max_norm": dict(self._max)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._max = {str(k): float(v) for k, v in state["max_norm"].items()}
