"""Experiments as data: sweep grids and the runs they expand to.

- :mod:`~fedamole.experiments.grid`: grid files (``configs/sweeps/*.toml``) and their expansion.
- :mod:`~fedamole.experiments.sweep`: plan and run a grid (skip finished, resume partial, GPUs).

This package starts runs; reading their results (tables, figures) is :mod:`fedamole.analysis`'s
job, which never starts one.
"""

from fedamole.experiments.grid import Grid, GridError, GridRun, expand, load_grid
from fedamole.experiments.sweep import PlannedRun, SweepResult, format_plan, plan, run_sweep

__all__ = [
    "Grid",
    "GridError",
    "GridRun",
    "PlannedRun",
    "SweepResult",
    "expand",
    "format_plan",
    "load_grid",
    "plan",
    "run_sweep",
]
