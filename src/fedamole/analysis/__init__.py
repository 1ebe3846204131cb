"""Experiments as data: sweep grids, result tables and figures from run directories.

- :mod:`~fedamole.analysis.grid`: grid files (``configs/sweeps/*.toml``) and their expansion.
- :mod:`~fedamole.analysis.sweep`: plan and run a grid (skip finished, resume partial, GPUs).
- :mod:`~fedamole.analysis.results`: read run directories; method and scenario labels.
- :mod:`~fedamole.analysis.report`: the paper's Table 1 layout, per-client and overhead tables.
- :mod:`~fedamole.analysis.plots`: the paper's figures (PNG and SVG).

Plotting imports matplotlib; import :mod:`fedamole.analysis.plots` explicitly to use it.
"""

from fedamole.analysis.grid import Grid, GridError, GridRun, expand, load_grid
from fedamole.analysis.report import Report, build_report, format_csv, format_markdown
from fedamole.analysis.results import Entry, Run, entries, load_runs
from fedamole.analysis.sweep import PlannedRun, SweepResult, format_plan, plan, run_sweep

__all__ = [
    "Entry",
    "Grid",
    "GridError",
    "GridRun",
    "PlannedRun",
    "Report",
    "Run",
    "SweepResult",
    "build_report",
    "entries",
    "expand",
    "format_csv",
    "format_markdown",
    "format_plan",
    "load_grid",
    "load_runs",
    "plan",
    "run_sweep",
]
