"""Which checkpoint is the best: :func:`selection_split` names the split whose client-mean score
chooses, :class:`BestCheckpoint` keeps ``checkpoints/best`` on it as the round loop
(:mod:`fedamole.engines.common`) saves ``checkpoints/last``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedamole.algorithms.registry import algorithm_spec
from fedamole.config import Config
from fedamole.rundir import (
    BEST,
    LAST,
    CheckpointError,
    JsonlTail,
    RunDir,
    checkpoint_info,
    fold,
    promote_checkpoint,
)

__all__ = ["BestCheckpoint", "checkpoint_or_none", "selection_split"]

log = logging.getLogger("fedamole")


def selection_split(cfg: Config) -> str:
    """The evaluation split whose client-mean ``score`` picks ``checkpoints/best``.

    The split of the run's main row in ``fedamole report`` (:func:`fedamole.analysis.results.
    method_labels`): ``test`` (after local training) with ``eval.timing = "personalized"``,
    ``test_global`` (the received global model) with ``"global"``; with ``"both"``, ``test_global``
    for the algorithms whose product is the global model (FedIT, FedPrompt, FedPTuning, FFA-LoRA,
    FDLoRA: the plain label, the other row is ``-FT``) and ``test`` for the others.
    """
    from fedamole.analysis.results import method_labels

    splits = [split for _, split in method_labels(cfg.to_dict())]
    if len(splits) == 1:
        return splits[0]
    return "test_global" if algorithm_spec(cfg.federation.algorithm).global_model else "test"


class BestCheckpoint:
    """Keeps ``checkpoints/best`` = the checkpoint of the round ``fedamole report --round best``
    names: the maximum over rounds of the unweighted client mean of ``<split>/score``
    (:func:`selection_split`; the earliest round on ties, as
    :func:`fedamole.analysis.summaries.summarize_rounds`). Only rounds with scores compete: with
    ``eval.every > 1`` an untested round is never promoted, and ``last`` holds a later tested
    round when its scores complete (below), so the promotion happens then.

    A round's mean is final once every client reported it: ``test`` scores of round ``r`` arrive
    in round ``r``, ``test_global`` scores of round ``r`` (the global model after its aggregation)
    in round ``r + 1``. :meth:`update` is called before and after each save of ``last``; whenever
    the best complete round is the one ``last`` holds and ``best`` holds another, ``last`` is
    copied to ``best`` (:func:`~fedamole.rundir.promote_checkpoint`, atomic). Everything is
    derived from ``metrics.jsonl`` and the checkpoints on disk, so a resumed run (whose
    ``metrics.jsonl`` was cut back to its checkpoint) keeps the same ``best`` as an uninterrupted
    one; a kill between saving ``last`` and promoting it is repaired on resume.
    """

    def __init__(self, cfg: Config, run: RunDir):
        self.split = selection_split(cfg)
        self.folder = run.checkpoints
        self._metrics = JsonlTail(run.metrics)  # read incrementally, as it grows
        self._scores: dict[int, dict[int, float]] = {}  # round -> client -> score

    def update(self, played: int) -> None:
        """Promote ``last`` to ``best`` when it holds the best complete round, given that every
        round up to ``played`` has run."""
        complete = played if self.split == "test" else played - 1
        fold(self._metrics.read(), self.split, "score", into=self._scores)
        means = {
            rnd: sum(v.values()) / len(v)
            for rnd, v in self._scores.items()
            if rnd <= complete and v
        }
        if not means:
            return
        from fedamole.analysis.summaries import summarize_rounds

        rnd, value = summarize_rounds(means, "best")
        last = checkpoint_or_none(self.folder, LAST)
        if last is None or last["round"] != rnd:
            return
        # damaged: replaced by the round `last` holds
        current = checkpoint_or_none(self.folder, BEST)
        if current is not None and current["round"] == rnd:
            return
        selection = {"rule": "best", "round": rnd, "split": self.split, "metric": "score"}
        promote_checkpoint(self.folder, {**selection, "value": value}, source=LAST, target=BEST)
        log.info("checkpoints/best: round %d (%s/score %.4f)", rnd, self.split, value)


def checkpoint_or_none(folder: Path, name: str) -> dict[str, Any] | None:
    """:func:`~fedamole.rundir.checkpoint_info`, ``None`` for a damaged checkpoint too (a
    resume from ``best`` past a damaged ``last``, which the next save replaces)."""
    try:
        return checkpoint_info(folder, name)
    except CheckpointError:
        return None
