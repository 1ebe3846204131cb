"""Resuming a run: the checkpoint to start from, and every file the resume relies on checked
against it (docs/run-directory.md#what-a-resume-checks).

:func:`restore` loads ``checkpoints/last`` (or ``checkpoints/best`` when ``last`` is missing or
damaged: an earlier round, the later ones are played again exactly), checks that it was written
with the given config, checks ``metrics.jsonl`` and ``predictions.jsonl`` against the checkpoint's
ledger before anything changes (:func:`~fedamole.rundir.ledger.check_logs`), writes again what
the checkpoint holds (``config.toml``, ``comm.jsonl``, the assignments; ``env.json`` with this
process's environment) and removes a ``done.json`` that no longer tells the truth; the caller
restores the server's and the clients' state from what it returns. Every refusal says what the
directory holds and a fix that works there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedamole.config import Config, ConfigError, dump, load
from fedamole.rundir import (
    BEST,
    LAST,
    CheckpointError,
    RunDir,
    config_mismatch,
    fold,
    has_checkpoint,
    load_checkpoint,
    read_jsonl,
)
from fedamole.rundir.env import write_env
from fedamole.rundir.ledger import Ledger, check_logs, read_assignment_texts, repair_side_files

__all__ = ["received_too_late", "restore"]

log = logging.getLogger("fedamole")


def received_too_late(start: int) -> Callable[[Mapping[str, Any]], bool]:
    """The records a resume at round ``start`` discards besides those of later rounds: the
    received-model metrics of round ``start`` are logged as ``test_global`` of round
    ``start - 1``, and a kill during round ``start`` may have left some of them."""

    def drop(record: Mapping[str, Any]) -> bool:
        return record["round"] == start - 1 and record["split"] == "test_global"

    return drop


def restore(run: RunDir, cfg: Config, *, last: int) -> tuple[dict[str, Any], dict[int, str]]:
    """Load the checkpoint to resume from, check every file the resume relies on against it
    (docs/run-directory.md#what-a-resume-checks), rebuild what it holds, restore the state.

    Args:
        last: the last round the run plays (:func:`~fedamole.engines.common.last_round`).

    Returns:
        The checkpoint's state (``round``, ``server``, ``clients``, ...), for the caller to
        restore, and round -> assignment file text up to its round (without that round's when an
        older checkpoint has no ledger: the caller writes it from the restored server state).

    Raises:
        CheckpointError: no usable checkpoint, one of another config, or a file that does not
            hold what the checkpoint recorded and cannot be rebuilt (the message names it).
    """
    state = _resumable_state(run, cfg)
    rnd = int(state["round"])
    ledger = Ledger.from_state(state)
    check_logs(run, ledger, rnd, drop=received_too_late(rnd + 1))  # reads only
    if not _holds_config(run, cfg):  # the checkpoint's config is cfg (checked above)
        what = "was damaged" if run.config.exists() else "was missing"
        dump(cfg, run.config)
        log.warning("%s %s: written again from the checkpoint's config", run.config, what)
    if not _readable_json(run.env):
        what = "was damaged" if run.env.exists() else "was missing"
        write_env(run.env)
        log.warning("%s %s: written again with this process's environment", run.env, what)
    if run.finished and rnd < last:  # rounds after the checkpoint are played again
        run.done.unlink()
        log.warning("%s removed: rounds %d.. are played again", run.done, rnd + 1)
    if ledger is not None:
        repair_side_files(run, ledger, rnd)
        assignments = {r: t for r, t in ledger.assignments.items() if r <= rnd}
    else:
        assignments = {r: t for r, t in read_assignment_texts(run).items() if r <= rnd}
    return state, assignments


def _holds_config(run: RunDir, cfg: Config) -> bool:
    """Whether ``config.toml`` exists, loads and resumes as ``cfg`` (fields that change no
    result aside)."""
    try:
        return config_mismatch(load(run.config), cfg) is None
    except (ConfigError, OSError):
        return False


def _readable_json(path: Path) -> bool:
    """Whether ``path`` holds a JSON object."""
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


def _resumable_state(run: RunDir, cfg: Config) -> dict[str, Any]:
    """The state of ``checkpoints/last``, or of ``checkpoints/best`` when ``last`` is missing or
    unreadable (resuming from an earlier round replays the later ones exactly), checked to be of
    ``cfg``.

    Raises:
        CheckpointError: neither can be loaded (the message says why, and what works), or the
            checkpoint was written with another configuration.
    """
    problems = []
    for name in (LAST, BEST):
        where = run.checkpoints / name
        if not has_checkpoint(run.checkpoints, name):
            problems.append(f"{where} is missing")
            continue
        try:
            state = load_checkpoint(run.checkpoints, name)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if name == BEST:
            log.warning("resuming from %s (round %d): %s", where, state["round"], problems[0])
        saved = json.loads(state["config"])  # a dict: an older version's config may not validate
        mismatch = config_mismatch(saved, cfg)  # run.tensorboard and run.hooks may change
        if mismatch is not None:
            raise CheckpointError(
                f"the checkpoint in {run.checkpoints} was written with another configuration "
                f"({mismatch}); resume with the run's own {run.config.name}"
            )
        return state
    raise CheckpointError(_no_checkpoint(run, cfg, problems))


def _no_checkpoint(run: RunDir, cfg: Config, problems: list[str]) -> str:
    """Why ``run`` cannot be resumed when no checkpoint loads, true to what the directory holds."""
    again = (
        "Start the run again with --overwrite instead of --resume (it moves this directory aside)"
    )
    if not run.holds_checkpoint:
        if not cfg.run.checkpoint:
            return (
                f"no checkpoint in {run.checkpoints}: the run keeps none (run.checkpoint = false), "
                f"so it cannot be resumed. {again}"
            )
        played = _rounds_played(run)
        if played is None:
            return (
                f"no checkpoint in {run.checkpoints}; the run ended before its first round was "
                f"saved. {again}"
            )
        return (
            f"no checkpoint in {run.checkpoints}, although {run.metrics.name} shows round "
            f"{played} completed: the checkpoints were deleted or lost, and the run cannot "
            f"continue without one. {again}"
        )
    return f"cannot resume {run.path}: {'; '.join(problems)}. {again}"


def _rounds_played(run: RunDir) -> int | None:
    """The last round ``metrics.jsonl`` shows completed (its ``server/round_seconds``)."""
    try:
        seconds = fold(
            read_jsonl(run.metrics, steps=False, partial_last="drop"), "server", "round_seconds"
        )
    except ValueError:
        return None
    return max(seconds, default=None)
