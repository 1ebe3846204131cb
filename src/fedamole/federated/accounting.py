"""Privacy accounting for the Gaussian mechanisms (docs/privacy.md#accounting), on Google's
``dp-accounting`` library: its Rényi-DP accountant composes the releases and converts them to an
``(epsilon, delta)`` guarantee; its ``calibrate_dp_mechanism`` solves the noise multiplier for a
target epsilon. Nothing here is a hand-written privacy formula.

Why ``dp-accounting`` (checked 2026-12): it is maintained by Google beside its DP libraries, is pure
Python on any 3.10+ (its one compiled dependency, ``dm-tree``, has cp311 wheels), pulls only
``dm-tree``, ``wrapt`` and ``mpmath`` beyond what fedamole already has, and has an event API
(Gaussian, Poisson-sampled, self-composed) with a neighbouring relation per accountant and a
calibration routine. Its cost: it caps ``attrs < 24``, so the lock pins ``attrs`` 23.2.0.
Opacus 1.6 (RDP and PRV accountants, pulls ``opt-einsum``) was the alternative; its accountant
API is tied to DP-SGD's sample-rate/steps history, and importing it loads its training engine.

Why RDP and not PLD: every release here is a full-participation Gaussian mechanism (sampling
rate 1), for which RDP composition is exact and its conversion to ``(epsilon, delta)`` is within a
few percent of the tight value over tens of rounds; it is also fast enough to recompute each
round. The accountant's neighbouring relation is add-or-remove-one (of an example for the RSEA
statistics, of a client for model updates).

An :class:`Accountant`'s whole state is the number of releases it composed (every release of
one mechanism has the same noise multiplier), so a checkpoint restores it exactly.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import dp_accounting
from dp_accounting.rdp import RdpAccountant

__all__ = ["Accountant", "epsilon_for", "noise_for_epsilon"]


def _check(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> None:
    if not noise_multiplier > 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise_multiplier ({noise_multiplier}) must be a finite number > 0")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate ({sampling_rate}) must be in (0, 1]")
    if steps < 0:
        raise ValueError(f"steps ({steps}) must be >= 0")
    if not 0 < delta < 1:
        raise ValueError(f"delta ({delta}) must be in (0, 1)")


def _event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


@functools.lru_cache(maxsize=4096)
def epsilon_for(
    noise_multiplier: float,
    *,
    steps: int,
    delta: float,
    sampling_rate: float = 1.0,
    orders: tuple[float, ...] | None = None,
) -> float:
    """Epsilon of ``steps`` compositions of the (Poisson-subsampled) Gaussian mechanism.

    Args:
        noise_multiplier: noise standard deviation over the L2 sensitivity.
        steps: releases composed (0 gives 0).
        delta: the target delta.
        sampling_rate: Poisson sampling probability of each release (1: everyone, every time).
        orders: RDP orders; ``None`` takes the library's default grid.

    Returns:
        The accountant's epsilon at ``delta`` (add-or-remove-one neighbours).
    """
    _check(noise_multiplier, sampling_rate, steps, delta)
    if steps == 0:
        return 0.0
    accountant = RdpAccountant(orders=list(orders) if orders is not None else None)
    accountant.compose(_event(noise_multiplier, sampling_rate), steps)
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=256)
def noise_for_epsilon(
    epsilon: float, *, steps: int, delta: float, sampling_rate: float = 1.0
) -> float:
    """The smallest noise multiplier (to the library's tolerance) whose ``steps`` releases stay
    within ``(epsilon, delta)``; :func:`epsilon_for` of the result is ``<= epsilon``.

    Raises:
        ValueError: ``epsilon`` not positive, or ``steps`` < 1.
    """
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"target epsilon ({epsilon}) must be a finite number > 0")
    if steps < 1:
        raise ValueError(f"steps ({steps}) must be >= 1 to calibrate noise")
    _check(1.0, sampling_rate, steps, delta)

    def fresh() -> RdpAccountant:
        return RdpAccountant()

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(_event(z, sampling_rate), steps)

    bracket = dp_accounting.LowerEndpointAndGuess(lower_endpoint=1e-3, initial_guess=1.0)
    z = float(dp_accounting.calibrate_dp_mechanism(fresh, event, epsilon, delta, bracket, tol=1e-6))
    # The library returns a value within budget; make that a checked invariant, not a hope.
    assert epsilon_for(z, steps=steps, delta=delta, sampling_rate=sampling_rate) <= epsilon
    return z


class Accountant:
    """Releases of one Gaussian mechanism with a fixed noise multiplier, composed over rounds.

    Example::

        acc = Accountant(noise_multiplier=z, delta=1e-5)
        acc.step()  # one release (e.g. one round's upload)
        acc.epsilon  # the guarantee so far
    """

    def __init__(self, *, noise_multiplier: float, delta: float, sampling_rate: float = 1.0):
        _check(noise_multiplier, sampling_rate, 0, delta)
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.sampling_rate = sampling_rate
        self.steps = 0

    def step(self, count: int = 1) -> None:
        """Compose ``count`` more releases."""
        if count < 0:
            raise ValueError(f"count ({count}) must be >= 0")
        self.steps += count

    @property
    def epsilon(self) -> float:
        return epsilon_for(
            self.noise_multiplier,
            steps=self.steps,
            delta=self.delta,
            sampling_rate=self.sampling_rate,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "noise_multiplier": self.noise_multiplier}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["noise_multiplier"]) != self.noise_multiplier:
            raise ValueError(
                f"the saved accountant used noise multiplier {state['noise_multiplier']}, this "
                f"run {self.noise_multiplier}: the privacy config changed since the checkpoint"
            )
        self.steps = int(state["steps"])
