"""Per-client splits: train, embedding ("aux"), eval and test (docs/data.md#client-splits).

Each client's indices are shuffled, then cut in order by the normalized ratios
``[1 - x, x, e / (1 - e - t), t / (1 - e - t)]`` where x is the embedding ratio (0.05 in the paper,
``data.embedding_ratio``), e the eval ratio and t the test ratio. With e = t = 0.1 this is
76 / 4 / 10 / 10 %; with SNLI's 10k/570k it is about 91.7 / 4.8 / 1.75 / 1.75 %.

Cut points are ``floor(cumsum(ratios) * n)``, as ``np.split`` at cumulative proportions in the
reference. Then the embedding, eval and test pieces are capped (200 / 200 / 200 for answer-choice
data or 50 for generation by default); as in the reference, examples beyond a cap are dropped, not
moved to train. ``test_cap = None`` resolves to 200 when every example has answer choices and to
50 otherwise (so the mixed synthetic suite gets 50: generation dominates evaluation time).

Dropping examples whose prompt is too long for the model happens later, at tokenization
(``collate.py``), since it depends on the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedamole.config import DataConfig
from fedamole.data.types import ClientData, DataError, Example

__all__ = [
    "CHOICE_TEST_CAP",
    "GENERATION_TEST_CAP",
    "resolve_test_cap",
    "split_client",
    "split_ratios",
    "split_sizes",
]

CHOICE_TEST_CAP = 200
GENERATION_TEST_CAP = 50


def split_ratios(embedding_ratio: float, eval_ratio: float, test_ratio: float) -> np.ndarray:
    """The normalized (train, embedding, eval, test) fractions, shape (4,), summing to 1.

    Raises:
        DataError: ``eval_ratio + test_ratio >= 1`` or a ratio outside [0, 1).
    """
    ratios = {"embedding": embedding_ratio, "eval": eval_ratio, "test": test_ratio}
    for name, value in ratios.items():
        if not 0 <= value < 1:
            raise DataError(f"`data.{name}_ratio` ({value}) must be in [0, 1)")
    rest = 1 - eval_ratio - test_ratio
    if rest <= 0:
        raise DataError(
            f"`data.eval_ratio` + `data.test_ratio` ({eval_ratio} + {test_ratio}) must be < 1"
        )
    raw = np.array([1 - embedding_ratio, embedding_ratio, eval_ratio / rest, test_ratio / rest])
    return raw / raw.sum()


def split_sizes(n: int, ratios: np.ndarray, caps: Sequence[int | None]) -> tuple[int, ...]:
    """Sizes of the four pieces of a client with ``n`` examples, before and after caps.

    Args:
        n: the client's example count.
        ratios: (4,) normalized fractions from :func:`split_ratios`.
        caps: (4,) the maximum size of each piece, ``None`` for no cap (train).

    Returns:
        (train, embedding, eval, test) sizes after capping; they may sum to less than ``n``.
    """
    sizes = np.diff(np.concatenate([[0], _cuts(n, ratios), [n]]))  # (4,)
    return tuple(int(s) if c is None else int(min(s, c)) for s, c in zip(sizes, caps, strict=True))


def _cuts(n: int, ratios: np.ndarray) -> np.ndarray:
    """(3,) where a client's shuffled examples are cut into train, embedding, eval and test.

    ``data.test_ratio = 0`` gives no test example: the cumulative sum of the ratios can round to
    just below 1 (0.9999999 * n truncates to n - 1), which handed that empty piece one example.
    A zero embedding or eval ratio adds exactly 0 to the sum, so its cut already coincides.
    """
    cuts = (np.cumsum(ratios)[:-1] * n).astype(int)  # (3,)
    if ratios[3] == 0:
        cuts[2] = n
    return cuts


def resolve_test_cap(data: DataConfig, examples: Sequence[Example]) -> int:
    """``data.test_cap``, or the automatic cap: 200 for all-choice data, 50 otherwise."""
    if data.test_cap is not None:
        return data.test_cap
    if examples and all(ex.is_choice for ex in examples):
        return CHOICE_TEST_CAP
    return GENERATION_TEST_CAP


def split_client(
    examples: Sequence[Example],
    indices: np.ndarray,
    ratios: np.ndarray,
    caps: Sequence[int | None],
    rng: np.random.Generator,
) -> ClientData:
    """Shuffle one client's indices and cut them into its four splits.

    Args:
        examples: the whole dataset.
        indices: (n,) the client's example indices.
        ratios: (4,) normalized fractions from :func:`split_ratios`.
        caps: (4,) caps for (train, embedding, eval, test); ``None`` means uncapped.
        rng: shuffles the indices.

    Returns:
        The client's splits, in the shuffled order.

    Raises:
        DataError: the train split would be empty.
    """
    order = rng.permutation(np.asarray(indices))
    pieces = np.split(order, _cuts(len(order), ratios))
    sizes = split_sizes(len(order), ratios, caps)
    if sizes[0] == 0:
        raise DataError(
            f"a client with {len(order)} examples gets an empty train split; raise "
            "`partition.min_size` or lower the embedding/eval/test ratios"
        )
    train, emb, evl, test = (
        tuple(examples[int(i)] for i in piece[:size])
        for piece, size in zip(pieces, sizes, strict=True)
    )
    return ClientData(train=train, embedding=emb, eval=evl, test=test)
