"""Paired bootstrap intervals for the difference between two methods
(docs/results/collaboration.md).

A method's value on a scenario is the mean over seeds of its client-mean test score: each client's
mean over its test examples, averaged over clients. Two methods run with the same seed share the
partition, the test examples and the initial weights, so they are compared in pairs:
:func:`paired_difference` resamples seeds with replacement and, within each drawn seed and each
client, that client's test examples with replacement, the same draw for both methods, and takes
the 2.5 and 97.5 percentiles of the resampled difference. The interval so covers both sources of
noise a results table has: which seeds were run and which test examples were drawn.

Scores are given per example (1/0 for an answer choice, the ROUGE-L F for free text), as
``predictions.jsonl`` records them. The verdict follows the interval: ``ahead`` when it lies above
0, ``behind`` when below, ``cannot tell`` when it holds 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Difference", "PerExample", "paired_difference", "verdict"]

PerExample = Mapping[int, Sequence[Sequence[float]]]
"""seed -> client -> that client's per-example test scores, in one fixed example order."""


@dataclass(frozen=True)
class Difference:
    """``a - b`` in client-mean test score, with its paired bootstrap interval.

    Attributes:
        mean: the observed difference (mean over the shared seeds).
        low: the 2.5th percentile of the bootstrap distribution.
        high: the 97.5th percentile.
        seeds: the seeds both methods ran (the pairs).
        resamples: bootstrap replicates drawn.
    """

    mean: float
    low: float
    high: float
    seeds: tuple[int, ...]
    resamples: int

    @property
    def verdict(self) -> str:
        """``ahead``, ``behind`` or ``cannot tell`` (:func:`verdict`)."""
        return verdict(self.low, self.high)


def verdict(low: float, high: float) -> str:
    """``ahead`` if the interval lies above 0, ``behind`` if below, else ``cannot tell``."""
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    return "cannot tell"


def _client_mean(scores: Sequence[Sequence[float]]) -> float:
    return float(np.mean([np.mean(np.asarray(c, dtype=float)) for c in scores]))


def _paired_arrays(a: PerExample, b: PerExample, seed: int) -> list[np.ndarray]:
    """Per client, the (n, 2) scores of ``a`` and ``b`` on one seed's shared test examples."""
    if len(a[seed]) != len(b[seed]):
        raise ValueError(
            f"seed {seed}: {len(a[seed])} clients against {len(b[seed])}; paired methods must "
            "share the partition"
        )
    out = []
    for client, (x, y) in enumerate(zip(a[seed], b[seed], strict=True)):
        if len(x) != len(y) or not len(x):
            raise ValueError(
                f"seed {seed}, client {client}: {len(x)} test scores against {len(y)}; paired "
                "methods must score the same, non-empty test set"
            )
        out.append(np.stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)], axis=1))
    return out


def paired_difference(
    a: PerExample, b: PerExample, *, resamples: int = 2000, seed: int = 0
) -> Difference:
    """The difference ``a - b`` in client-mean test score with a 95 % paired bootstrap interval.

    Args:
        a: method A's per-example scores by seed and client.
        b: method B's, on the same seeds, clients and test examples (the seeds both have are used).
        resamples: bootstrap replicates.
        seed: seeds the bootstrap's generator (the interval is reproducible).

    Returns:
        The observed mean difference, the percentile interval and the seeds used.

    Raises:
        ValueError: no shared seed, or a seed whose clients or test sets differ in size.
    """
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} against {sorted(b)}")
    if resamples < 1:
        raise ValueError(f"resamples ({resamples}) must be >= 1")
    pairs = {s: _paired_arrays(a, b, s) for s in seeds}
    observed = float(np.mean([_client_mean(a[s]) - _client_mean(b[s]) for s in seeds]))
    rng = np.random.default_rng(seed)
    n = len(seeds)
    drawn = rng.integers(n, size=(resamples, n))  # (R, n) which seed fills each position
    # diff[k]: (R, n) the client-mean difference of seed k with its examples resampled afresh
    # for every replicate and position; a replicate's value averages the positions' drawn seeds
    total = np.zeros((resamples, n))
    for k, s in enumerate(seeds):
        per_client = []
        for scores in pairs[s]:  # (m, 2)
            idx = rng.integers(len(scores), size=(resamples, n, len(scores)))  # (R, n, m)
            diffs = scores[:, 0] - scores[:, 1]  # (m,)
            per_client.append(diffs[idx].mean(axis=-1))  # (R, n)
        total += np.where(drawn == k, np.mean(per_client, axis=0), 0.0)
    replicate = total.mean(axis=1)  # (R,)
    low, high = np.percentile(replicate, [2.5, 97.5])
    return Difference(observed, float(low), float(high), seeds, resamples)
