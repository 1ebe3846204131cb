"""ROUGE-L F of one hypothesis against one reference, two implementations
(docs/algorithm.md#generation-and-rouge-l).

``pltrdy`` re-implements, in plain Python and without importing it, the 'rouge-l' 'f' value of
the ``rouge==1.0.1`` package that the reference scores Dolly and NI with. Its semantics, reproduced
exactly (``tests/unit/test_evaluation.py`` checks parity with the package itself):

- A text is split on ``"."``; empty pieces are dropped; each piece's whitespace (``str.split``)
  is collapsed. A piece of whitespace only therefore survives as the empty sentence, whose single
  token is the empty string ``""`` (a real token, which can match the reference's).
- Tokens are whitespace-separated and case-sensitive; there is no other normalization.
- Summary-level union LCS with *exclusive* (set) counting: for every pair (reference sentence,
  hypothesis sentence) one LCS is reconstructed by backtracking the DP table, preferring a match,
  then a step up in the reference only when strictly better, else a step left in the hypothesis.
  The overlap is the number of *distinct* words in the union of all these LCSs; m and n are the
  numbers of distinct words of the reference and of the hypothesis. The tie-break matters: the
  reconstructed LCS decides which words enter the union.
- ``F = 2 P R / (P + R + 1e-8)`` with ``P = overlap / n`` and ``R = overlap / m``, so a perfect
  match scores ``1 - 5e-9``, not 1.

We deviate only on texts with no word at all (empty, whitespace or dots only): they score 0. The
package raises on some of them (no sentence left) and gives spurious scores on others (the
empty-sentence token matching). Our backtracking is iterative: the package's recursion fails on
sentences of about a thousand words.

``rouge-score`` delegates to Google's ``rouge_score`` package: rougeL (sentence-level LCS)
fmeasure with its default tokenizer (lower-cased, every non-``[a-z0-9]`` character a separator,
so non-Latin text has no token and scores 0) and no stemmer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

__all__ = ["ROUGE_IMPLS", "rouge_l", "rouge_l_google", "rouge_l_pltrdy"]


def _sentences(text: str) -> list[list[str]]:
    """Token lists of the '.'-separated sentences, as the ``rouge`` package forms them."""
    return [piece.split() or [""] for piece in text.split(".") if piece]


def _has_words(sentences: list[list[str]]) -> bool:
    return any(token for sentence in sentences for token in sentence)


def _lcs_words(ref: list[str], hyp: list[str]) -> set[str]:
    """The distinct words of the LCS of ``ref`` and ``hyp``, backtracked with the package's rule."""
    cols = len(hyp) + 1
    # table[i][j] = LCS length of ref[:i] and hyp[:j]; (len(ref)+1, len(hyp)+1)
    table = [[0] * cols]
    for word in ref:
        above, row = table[-1], [0]
        for j in range(1, cols):
            row.append(above[j - 1] + 1 if word == hyp[j - 1] else max(above[j], row[j - 1]))
        table.append(row)
    words: set[str] = set()
    i, j = len(ref), len(hyp)
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_pltrdy(hypothesis: str, reference: str) -> float:
    """ROUGE-L F as ``rouge==1.0.1`` computes it (see the module docstring); 0 if wordless."""
    hyp, ref = _sentences(hypothesis), _sentences(reference)
    if not (_has_words(hyp) and _has_words(ref)):
        return 0.0
    union: set[str] = set()
    for ref_sentence in ref:
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_sentence, hyp_sentence)
    overlap = len(union)
    if overlap == 0:
        return 0.0
    m = len({token for sentence in ref for token in sentence})
    n = len({token for sentence in hyp for token in sentence})
    precision, recall = overlap / n, overlap / m
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


@lru_cache(maxsize=1)
def _google_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_google(hypothesis: str, reference: str) -> float:
    """Google ``rouge_score`` rougeL fmeasure (default tokenizer, no stemmer); 0 if blank."""
    if not (hypothesis.strip() and reference.strip()):
        return 0.0
    return float(_google_scorer().score(reference, hypothesis)["rougeL"].fmeasure)


ROUGE_IMPLS: dict[str, Callable[[str, str], float]] = {
    "rouge": rouge_l_pltrdy,
    "rouge-score": rouge_l_google,
}


def rouge_l(
    hypothesis: str, reference: str, *, impl: Literal["rouge", "rouge-score"] = "rouge"
) -> float:
    """ROUGE-L F of one hypothesis against one reference, in [0, 1].

    Args:
        hypothesis: the generated text.
        reference: the gold response.
        impl: ``"rouge"``: summary-level union LCS of the ``rouge==1.0.1`` package (pltrdy),
            sentences split on ".", whitespace tokens, case-sensitive, ``F = 2PR/(P+R+1e-8)``;
            the paper's. ``"rouge-score"``: Google's ``rouge_score`` rougeL fmeasure, default
            tokenizer (lower-cased, alphanumeric ASCII tokens only), no stemmer.

    Returns:
        The F value; 0 when either text has no word (empty, whitespace, or dots only).

    Raises:
        ValueError: for an unknown ``impl``.
    """
    if impl not in ROUGE_IMPLS:
        raise ValueError(f"`impl` ({impl!r}) must be one of {sorted(ROUGE_IMPLS)}")
    return ROUGE_IMPLS[impl](hypothesis, reference)
