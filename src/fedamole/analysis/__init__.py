"""Results from run directories: tables and figures, read from what runs wrote.

- :mod:`~fedamole.analysis.results`: read run directories; method and scenario labels.
- :mod:`~fedamole.analysis.summaries`: statistics across clients; the best or last round.
- :mod:`~fedamole.analysis.report`: the paper's Table 1 layout, per-client and overhead tables.
- :mod:`~fedamole.analysis.plots`: the paper's figures (PNG and SVG).
- :mod:`~fedamole.analysis.routing`: the routing projection of Fig. 8, from a run's checkpoint.

This package only reads run directories; it never starts a run. Grids and sweeps, which do, live
in :mod:`fedamole.experiments`.

Plotting imports matplotlib; import :mod:`fedamole.analysis.plots` explicitly to use it.
"""

from fedamole.analysis.report import Report, build_report, format_csv, format_markdown
from fedamole.analysis.results import Entry, Run, entries, load_runs

__all__ = [
    "Entry",
    "Report",
    "Run",
    "build_report",
    "entries",
    "format_csv",
    "format_markdown",
    "load_runs",
]
