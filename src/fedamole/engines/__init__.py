"""Engines run an experiment; the algorithms never know which one (docs/algorithm.md#engines)."""

from __future__ import annotations

from pathlib import Path

from fedamole.config import Config

__all__ = ["ENGINES", "run_experiment"]

ENGINES = ("embedded", "flower")


def run_experiment(
    cfg: Config,
    run_dir: Path,
    *,
    engine: str = "embedded",
    resume: bool = False,
    overwrite: bool = False,
):
    """Run one experiment on the chosen engine and return its :class:`RunResult`.

    ``embedded`` runs every client in this process; ``flower`` runs the same algorithm on
    Flower's simulation engine (needs ``fedamole[flower]``; see :mod:`fedamole.engines.flower`).

    Raises:
        ValueError: an unknown engine, or ``flower`` without ``flwr`` installed.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    if engine == "flower":
        from fedamole.engines.flower.simulation import run_flower_simulation

        return run_flower_simulation(cfg, run_dir, resume=resume, overwrite=overwrite)
    from fedamole.engines.embedded import run_embedded

    return run_embedded(cfg, run_dir, resume=resume, overwrite=overwrite)
