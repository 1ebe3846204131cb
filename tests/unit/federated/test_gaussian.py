"""The Gaussian mechanism on the RSEA statistics (fedamole.federated.gaussian): the noise has
the calibrated standard deviation, clipping is per example with the public bound, and the
layout round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedamole.federated.gaussian import flatten_examples, gaussian_mean, noisy_module_stats
from fedamole.mole import ExampleStats


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_noise_has_the_calibrated_standard_deviation():
    """std of the uploaded mean = z * C / m, measured over 20 000 coordinates (fixed seed):
    the sample std of n normal draws is within 3 % with overwhelming probability."""
    m, d, clip, z = 7, 20_000, 0.5, 1.3
    rows = np.zeros((m, d))  # clean mean 0: what is uploaded is the noise alone
    noisy, clipped = gaussian_mean(
        rows, clip=clip, noise_multiplier=z, rng=np.random.default_rng(0)
    )
    assert clipped == 0.0
    assert noisy.std() == pytest.approx(z * clip / m, rel=0.03)
    assert abs(noisy.mean()) < 4 * z * clip / m / np.sqrt(d)


def test_clipping_is_per_example_with_the_public_bound():
    """By hand: rows of norm 10, 0.3 and 4 with C = 1 become norms 1, 0.3, 1, each keeping its
    direction; their mean is the clean part of the upload (noise removed by a tiny z)."""
    rows = np.array([[6.0, 8.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 4.0]])
    expected = (np.array([0.6, 0.8, 0.0]) + np.array([0.0, 0.3, 0.0]) + np.array([0, 0, 1.0])) / 3
    mean, clipped = gaussian_mean(
        rows, clip=1.0, noise_multiplier=1e-9, rng=np.random.default_rng(1)
    )
    np.testing.assert_allclose(mean, expected, atol=1e-8)
    assert clipped == pytest.approx(2 / 3)
    # one example changes the clean sum by at most C, whatever its size (the sensitivity)
    bigger = rows.copy()
    bigger[0] *= 1000
    again, _ = gaussian_mean(bigger, clip=1.0, noise_multiplier=1e-9, rng=_rng(1))
    np.testing.assert_allclose(again, mean, atol=1e-8)
    without, _ = gaussian_mean(
        rows[1:], clip=1.0, noise_multiplier=1e-9, rng=np.random.default_rng(1)
    )
    assert np.linalg.norm(3 * mean - 2 * without) <= 1.0 + 1e-8


def _stats(rng: np.random.Generator, m: int = 5) -> dict[str, ExampleStats]:
    out = {}
    for name, n in (("b.layer", 2), ("a.layer", 3)):
        out[name] = ExampleStats(
            token=torch.from_numpy(rng.normal(size=(m, 4))),
            experts=torch.from_numpy(rng.normal(size=(m, n, 4))),
            expert_ids=torch.arange(n),
        )
    return out


def test_one_row_per_example_covers_every_module():
    stats = _stats(np.random.default_rng(2))
    rows = flatten_examples(stats)
    assert rows.shape == (5, (1 + 3) * 4 + (1 + 2) * 4)
    np.testing.assert_array_equal(rows[:, :4], stats["a.layer"].token.numpy())  # sorted by name


def test_noisy_module_stats_are_the_clean_means_without_clipping_or_noise():
    stats = _stats(np.random.default_rng(3))
    out, clipped = noisy_module_stats(
        stats, clip=1e6, noise_multiplier=1e-12, rng=np.random.default_rng(0)
    )
    assert clipped == 0.0 and list(out) == ["a.layer", "b.layer"]
    for name, st in stats.items():
        torch.testing.assert_close(out[name].token, st.token.mean(0).float())
        torch.testing.assert_close(out[name].experts, st.experts.mean(0).float())
        assert out[name].num_tokens == 5 and out[name].expert_ids.tolist() == st.expert_ids.tolist()
