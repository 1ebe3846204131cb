"""The accountant (fedamole.federated.accounting) against the library's documented values and
the exact privacy curve of the Gaussian mechanism computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from fedamole.federated.accounting import Accountant, epsilon_for, noise_for_epsilon

# dp-accounting's own test (rdp_privacy_accountant_test.test_compute_epsilon_delta_gaussian):
# "noise multiplier is chosen to obtain exactly (1, 1e-6)-DP" on this dense grid of orders.
_DOCUMENTED_ORDERS = tuple(0.001 * i for i in range(1000, 100000))


def test_epsilon_equals_the_librarys_documented_value():
    eps = epsilon_for(4.530877117, steps=1, delta=1e-6, orders=_DOCUMENTED_ORDERS)
    assert eps == pytest.approx(1.0, abs=1e-6)
    # the default grid of orders is coarser: a hair above, never below
    coarse = epsilon_for(4.530877117, steps=1, delta=1e-6)
    assert 1.0 <= coarse < 1.0 + 1e-3


def _exact_delta(sigma: float, eps: float) -> float:
    """Balle & Wang (2018), Theorem 8: the tight delta(eps) of one Gaussian mechanism with
    sensitivity 1 and noise standard deviation sigma."""
    return norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(
        -1 / (2 * sigma) - eps * sigma
    )


@pytest.mark.parametrize(("z", "steps"), [(1.0, 1), (2.0, 10), (5.0, 30), (0.8, 4)])
def test_epsilon_is_an_upper_bound_close_to_the_exact_gaussian_curve(z, steps):
    """k releases of a Gaussian with multiplier z are one Gaussian with z / sqrt(k); the exact
    epsilon solves delta(eps) = delta. RDP is an upper bound, within ~15 % here."""
    delta = 1e-5
    eps = epsilon_for(z, steps=steps, delta=delta)
    sigma = z / math.sqrt(steps)
    lo, hi = 0.0, 200.0
    for _ in range(200):  # bisection on the decreasing delta(eps)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _exact_delta(sigma, mid) > delta else (lo, mid)
    exact = hi
    assert exact <= eps <= 1.15 * exact


def test_composition_grows_and_subsampling_helps():
    one = epsilon_for(2.0, steps=1, delta=1e-5)
    ten = epsilon_for(2.0, steps=10, delta=1e-5)
    assert one < ten
    assert epsilon_for(2.0, steps=10, delta=1e-5, sampling_rate=0.1) < ten
    assert epsilon_for(2.0, steps=0, delta=1e-5) == 0.0


@pytest.mark.parametrize(("target", "steps"), [(1.0, 1), (1.0, 9), (4.0, 9), (16.0, 29)])
def test_solved_noise_meets_the_target_and_is_tight(target, steps):
    z = noise_for_epsilon(target, steps=steps, delta=1e-5)
    assert epsilon_for(z, steps=steps, delta=1e-5) <= target
    assert epsilon_for(z * 0.99, steps=steps, delta=1e-5) > target  # not needlessly noisy


def test_accountant_counts_releases_and_restores():
    acc = Accountant(noise_multiplier=3.0, delta=1e-5)
    assert acc.epsilon == 0.0
    acc.step()
    acc.step(2)
    assert acc.epsilon == pytest.approx(epsilon_for(3.0, steps=3, delta=1e-5))
    again = Accountant(noise_multiplier=3.0, delta=1e-5)
    again.load_state_dict(acc.state_dict())
    assert again.steps == 3 and again.epsilon == acc.epsilon
    other = Accountant(noise_multiplier=2.0, delta=1e-5)
    with pytest.raises(ValueError, match="noise multiplier 3.0"):
        other.load_state_dict(acc.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_multiplier": 0.0, "steps": 1, "delta": 1e-5}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "steps": 1, "delta": 1.0}, "delta"),
        ({"noise_multiplier": 1.0, "steps": 1, "delta": 1e-5, "sampling_rate": 0}, "sampling"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        epsilon_for(kwargs.pop("noise_multiplier"), **kwargs)
