"""Embedding noise statistics, clipping by the running max of clean norms
(docs/algorithm.md#privacy-noise)."""

from __future__ import annotations

import numpy as np
import pytest

from fedamole.federated.privacy import NormClipper, clip_to_norm, privatize, sample_noise


@pytest.mark.parametrize(("r", "eta"), [(8, 100.0), (8, 1.0), (16, 50.0)])
def test_noise_statistics(r: int, eta: float) -> None:
    noise = sample_noise((20_000, r), eta=eta, rng=np.random.default_rng(0))
    # E|n| = E[l] E|u| = (r / eta) (1 / 2);  E[n^2] = E[l^2] E[u^2] = r (r + 1) / eta^2 / 3
    assert np.abs(noise).mean() == pytest.approx(r / (2 * eta), rel=0.02)
    assert (noise**2).mean() == pytest.approx(r * (r + 1) / (3 * eta**2), rel=0.03)
    assert abs(noise.mean()) < 0.02 * r / eta  # symmetric
    assert (noise > 0).mean() == pytest.approx(0.5, abs=0.01)


def test_privatize_is_deterministic_given_the_generator() -> None:
    v = np.random.default_rng(1).normal(size=(7, 8))
    a = privatize(v, eta=10.0, rng=np.random.default_rng(5))
    b = privatize(v, eta=10.0, rng=np.random.default_rng(5))
    c = privatize(v, eta=10.0, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, v)


def test_privatize_clips_noisy_vectors_to_the_clean_maximum() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(50, 8))
    clipper = NormClipper()
    clip = clipper.update(v, key="m")
    assert clip == pytest.approx(np.linalg.norm(v, axis=1).max())
    noisy = privatize(v, eta=1.0, rng=rng, clip_norm=clip)  # large noise: most get clipped
    norms = np.linalg.norm(noisy, axis=1)
    assert (norms <= clip * (1 + 1e-12)).all()
    assert np.isclose(norms, clip).sum() > 25


def test_clip_to_norm_scales_only_long_vectors() -> None:
    v = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = clip_to_norm(v, 1.0)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    per_row = clip_to_norm(v, np.array([10.0, 0.25, 1.0]))
    np.testing.assert_allclose(per_row, [[3.0, 4.0], [0.15, 0.2], [0.0, 0.0]])


def test_norm_clipper_keeps_a_running_max_per_key_and_round_trips() -> None:
    clipper = NormClipper()
    assert clipper.max_norm("q") is None
    assert clipper.update(np.array([[3.0, 4.0]]), key="q") == 5.0
    assert clipper.update(np.array([[1.0, 0.0], [0.0, 2.0]]), key="q") == 5.0
    assert clipper.update(np.array([6.0, 8.0]), key="q") == 10.0
    assert clipper.update(np.array([[1.0, 0.0]]), key="v") == 1.0
    restored = NormClipper()
    restored.load_state_dict(clipper.state_dict())
    assert restored.max_norm("q") == 10.0
    assert restored.max_norm("v") == 1.0
    assert restored.update(np.zeros((1, 2))) == 0.0  # default key is independent


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="privacy_eta"):
        privatize(np.ones((2, 8)), eta=0.0, rng=rng)
    with pytest.raises(ValueError, match="r >= 1"):
        privatize(np.ones((2, 0)), eta=1.0, rng=rng)
    with pytest.raises(ValueError, match="NaN"):
        NormClipper().update(np.array([[np.nan, 1.0]]))
