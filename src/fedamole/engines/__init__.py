"""Engines run an experiment; the algorithms never know which one (docs/algorithm.md#engines)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedamole.config import Config, ConfigError

__all__ = ["ENGINES", "run_experiment"]

ENGINES = ("embedded", "flower")


def run_experiment(
    cfg: Config,
    run_dir: Path,
    *,
    engine: str = "embedded",
    resume: bool = False,
    overwrite: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
):
    """Run one experiment on the chosen engine and return its :class:`RunResult`.

    ``embedded`` runs every client in this process; ``flower`` runs the same algorithm on
    Flower's simulation engine (needs ``fedamole[flower]``; see :mod:`fedamole.engines.flower`).
    ``on_record`` is called with every record written to ``metrics.jsonl``
    (:func:`fedamole.rundir.open_hooks`); the hooks the config names (``run.tensorboard``,
    ``run.hooks``) are checked before anything starts.

    Before anything is created, :func:`fedamole.preflight.preflight` checks the data path, the
    device, the model and its target modules, and a run that will take hours on the CPU logs a
    warning saying so (:func:`fedamole.preflight.run_size_warning`). A new run that fails before
    it logged anything (a model or data that does not load after all) leaves no run directory
    behind to block the same command (:func:`fedamole.rundir.lifecycle.discard_unstarted`).

    Raises:
        ConfigError: what :func:`~fedamole.preflight.preflight` finds (nothing has started).
        ValueError: an unknown engine, or ``flower`` without ``flwr`` installed.
        fedamole.rundir.HookError: (a ``ValueError``) a ``run.hooks`` entry does not import,
            or ``run.tensorboard`` is set without TensorBoard installed.
    """
    from fedamole.preflight import preflight, run_size_warning
    from fedamole.rundir import RunDirError, check_hooks, setup_logging
    from fedamole.rundir.lifecycle import discard_unstarted

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    found = preflight(cfg)
    if found.problems():
        raise ConfigError(found.problems())
    check_hooks(cfg)
    warning = run_size_warning(cfg, found.parameters)
    if warning and not resume:
        setup_logging(cfg.run.log_level)  # the console, as the run will (its log.txt comes later)
        logging.getLogger("fedamole").warning(warning)
    fresh = not resume and (overwrite or not run_dir.exists() or not any(run_dir.iterdir()))
    existed = run_dir.is_dir() and not any(run_dir.iterdir())
    try:
        if engine == "flower":
            from fedamole.engines.flower.simulation import run_flower_simulation

            return run_flower_simulation(
                cfg, run_dir, resume=resume, overwrite=overwrite, on_record=on_record
            )
        from fedamole.engines.embedded import run_embedded

        return run_embedded(cfg, run_dir, resume=resume, overwrite=overwrite, on_record=on_record)
    except Exception as exc:
        unstarted = fresh and not isinstance(exc, RunDirError)  # RunDirError: prepare refused
        if unstarted and discard_unstarted(run_dir, existed=existed):
            logging.getLogger("fedamole").warning(
                "removed the run directory %s: the run failed before its first round", run_dir
            )
        raise
