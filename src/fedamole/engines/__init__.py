"""Engines run an experiment; the algorithms never know which one (DESIGN.md principle 1)."""

from __future__ import annotations

from pathlib import Path

from fedamole.config import Config

__all__ = ["ENGINES", "run_experiment"]

ENGINES = ("embedded",)


def run_experiment(
    cfg: Config,
    run_dir: Path,
    *,
    engine: str = "embedded",
    resume: bool = False,
    overwrite: bool = False,
):
    """Run one experiment on the chosen engine and return its :class:`RunResult`.

    Raises:
        ValueError: an unknown engine.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    from fedamole.engines.embedded import run_embedded

    return run_embedded(cfg, run_dir, resume=resume, overwrite=overwrite)
