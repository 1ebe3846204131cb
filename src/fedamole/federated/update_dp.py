"""Client-level differential privacy for model updates (``privacy.updates = "gaussian"``;
docs/privacy.md#client-level-dp-for-model-updates).

Each round, for every accepted client ``c`` with upload ``w_c`` and the weights it received
``w_0`` (the same for every client of an averaged group):

1. its update ``u_c = w_c - w_0``, *all* of its uploaded float tensors together, is clipped to the
   L2 norm ``C`` (``privacy.update_clip``): :meth:`UpdatePrivacy.clip`;
2. the server averages as usual; a tensor averaged over a group of ``m`` clients (FedIT: every
   accepted client; FedAMoLE: an expert's holders, or every client for the shared expert and the
   token projection) gets Gaussian noise of standard deviation ``z C / m``:
   :meth:`UpdatePrivacy.noise`.

Removing one client changes a group mean by at most ``|u_c^g| / m_g``; with the noise scaled by
each group's ``1 / m_g`` the whole round is one Gaussian mechanism of multiplier ``z`` on the
client's clipped update (its parts summed in quadrature stay within ``C``), so each round a
client uploads in is one release at ``z`` for the accountant, whatever groups it sits in. The
price is in the noise of small groups: a mean over 2 holders gets ``N/2`` times the noise
standard deviation of a mean over all ``N`` clients. The server logs the noise standard
deviation and group sizes every round (``server/dp/...``).

Assumes unweighted means (config validation refuses ``federation.weighting = "examples"``) and
treats the group sizes as public (the server knows the assignment).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import torch

from fedamole.config import Config
from fedamole.federated.accounting import epsilon_for, noise_for_epsilon

__all__ = ["UpdatePrivacy", "update_noise_multiplier"]


def update_noise_multiplier(cfg: Config, releases: int) -> float:
    """``privacy.update_noise_multiplier``, or the one solved for ``privacy.update_epsilon``
    over ``releases`` uploads per client."""
    p = cfg.privacy
    if p.update_noise_multiplier is not None:
        return p.update_noise_multiplier
    if p.update_epsilon is None:
        raise ValueError(
            "privacy.updates='gaussian' needs update_epsilon or update_noise_multiplier"
        )
    return noise_for_epsilon(p.update_epsilon, steps=releases, delta=p.delta)


class UpdatePrivacy:
    """Clipping, noise and per-client accounting of the model updates (server side).

    Args:
        cfg: the run's config (``[privacy]``, ``run.seed``).
        releases: uploads per client over the run (to solve the noise for a target epsilon).
    """

    def __init__(self, cfg: Config, releases: int):
        self.clip_norm = cfg.privacy.update_clip
        self.noise_multiplier = update_noise_multiplier(cfg, releases)
        self.delta = cfg.privacy.delta
        self.seed = cfg.run.seed
        self.releases: dict[int, int] = {}  # client -> rounds it was averaged in
        self.round_info: dict[str, float] = {}

    def clip(
        self, upload: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], float]:
        """``reference + min(1, C / |u|) u`` for ``u = upload - reference`` over every key of
        ``reference`` (other keys of ``upload`` pass unchanged).

        Returns:
            The clipped upload (each tensor in its own dtype), and ``|u|`` before clipping.
        """
        delta = {k: upload[k].double() - ref.double() for k, ref in reference.items()}
        norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        out = dict(upload)
        for k, ref in reference.items():
            out[k] = (ref.double() + scale * delta[k]).to(upload[k].dtype)
        return out, norm

    def generator(self, rnd: int) -> torch.Generator:
        """The round's noise generator (resumes draw the same noise)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * rnd + 17)

    def noise(self, mean: torch.Tensor, group_size: int, gen: torch.Generator) -> torch.Tensor:
        """``mean`` plus Gaussian noise of standard deviation ``z C / group_size``."""
        std = self.std(group_size)
        noise = torch.randn(mean.shape, generator=gen, dtype=torch.float64) * std
        return (mean.double() + noise).to(mean.dtype)

    def std(self, group_size: int) -> float:
        return self.noise_multiplier * self.clip_norm / group_size

    def step(self, clients: list[int], group_sizes: list[int], norms: list[float]) -> None:
        """Account one release for each of ``clients``; keep the round's ``dp/...`` metrics."""
        for c in clients:
            self.releases[c] = self.releases.get(c, 0) + 1
        eps = [self.epsilon(c) for c in clients]
        self.round_info = {
            "dp/epsilon_updates_max": max(eps, default=0.0),
            "dp/noise_multiplier_updates": self.noise_multiplier,
            "dp/group_size_min": float(min(group_sizes, default=0)),
            "dp/group_size_max": float(max(group_sizes, default=0)),
            "dp/noise_std_max": self.std(min(group_sizes)) if group_sizes else 0.0,
            "dp/noise_std_min": self.std(max(group_sizes)) if group_sizes else 0.0,
            "dp/clipped_updates": sum(n > self.clip_norm for n in norms) / max(len(norms), 1),
            "dp/update_norm_median": float(statistics.median(norms)) if norms else 0.0,
        }

    def epsilon(self, client: int) -> float:
        steps = self.releases.get(client, 0)
        return epsilon_for(self.noise_multiplier, steps=steps, delta=self.delta)

    def state_dict(self) -> dict[str, Any]:
        return {
            "releases": {str(c): n for c, n in sorted(self.releases.items())},
            "noise_multiplier": self.noise_multiplier,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if float(state["noise_multiplier"]) != self.noise_multiplier:
            raise ValueError(
                f"the checkpoint's update noise multiplier {state['noise_multiplier']} is not "
                f"this run's {self.noise_multiplier}: the privacy config changed"
            )
        self.releases = {int(c): int(n) for c, n in state["releases"].items()}
