"""The paired bootstrap of ``fedamole report``: hand-computed distributions and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from fedamole.analysis.bootstrap import paired_difference, verdict


def _replicates(monkeypatch, a, b, resamples):
    """The bootstrap's replicate values (captured from its percentile call)."""
    seen = {}
    real = np.percentile

    def spy(values, q):
        seen["values"] = np.asarray(values)
        return real(values, q)

    monkeypatch.setattr(np, "percentile", spy)
    result = paired_difference(a, b, resamples=resamples, seed=1)
    return result, seen["values"]


def test_examples_are_resampled_within_a_client(monkeypatch):
    # one seed, one client, per-example differences [1, 0]: a resample of two examples has mean
    # 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4
    result, values = _replicates(monkeypatch, {7: [[1, 0]]}, {7: [[0, 0]]}, 40_000)
    assert result.mean == 0.5 and result.seeds == (7,)
    freq = [np.mean(values == v) for v in (0.0, 0.5, 1.0)]
    assert freq == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
    assert (result.low, result.high) == (0.0, 1.0) and result.verdict == "cannot tell"


def test_seeds_are_resampled_with_replacement(monkeypatch):
    # seed 1: A wins every example, seed 2: a tie; two positions drawn from two seeds give
    # 1, 1/2, 0 with probabilities 1/4, 1/2, 1/4 (the examples add no noise: all equal)
    a = {1: [[1, 1, 1]], 2: [[0, 1, 0]]}
    b = {1: [[0, 0, 0]], 2: [[0, 1, 0]], 3: [[1, 1, 1]]}  # seed 3: A never ran it, unused
    result, values = _replicates(monkeypatch, a, b, 40_000)
    assert result.seeds == (1, 2) and result.mean == 0.5
    freq = [np.mean(np.isclose(values, v)) for v in (0.0, 0.5, 1.0)]
    assert freq == pytest.approx([0.25, 0.5, 0.25], abs=0.01)


def test_clients_weigh_equally_and_clear_results_get_a_verdict():
    # client 0 (4 examples) gains 1, client 1 (1 example) gains 0: the client mean gains 1/2
    a = {0: [[1, 1, 1, 1], [0]], 1: [[1, 1, 1, 1], [0]]}
    b = {0: [[0, 0, 0, 0], [0]], 1: [[0, 0, 0, 0], [0]]}
    result = paired_difference(a, b)
    assert (result.mean, result.low, result.high) == (0.5, 0.5, 0.5)
    assert result.verdict == "ahead"
    assert paired_difference(b, a).verdict == "behind"
    same = paired_difference(a, a)
    assert (same.mean, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "cannot tell")
    assert paired_difference(a, b, seed=3) == paired_difference(a, b, seed=3)


def test_verdict_words_follow_the_interval():
    assert verdict(0.01, 0.2) == "ahead"
    assert verdict(-0.2, -0.01) == "behind"
    assert verdict(-0.01, 0.2) == verdict(0.0, 0.1) == "cannot tell"


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({1: [[1]]}, {2: [[1]]})
    with pytest.raises(ValueError, match="share the partition"):
        paired_difference({1: [[1], [0]]}, {1: [[1]]})
    with pytest.raises(ValueError, match="client 0: 2 test scores against 1"):
        paired_difference({1: [[1, 0]]}, {1: [[1]]})
