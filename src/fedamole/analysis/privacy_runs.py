"""What a run's privacy settings and records say, for reports and figures (docs/privacy.md):
its mechanisms, and the epsilon its clients reached. Imports no plotting library."""

from __future__ import annotations

from fedamole.analysis.results import Run
from fedamole.rundir import SERVER_CLIENT, fold

__all__ = ["mechanisms", "run_epsilon"]


def mechanisms(run: Run) -> str:
    """``"statistics DP"``, ``"update DP"``, ``"statistics + update DP"`` or ``""``."""
    stats = run.get("federation.privacy") == "gaussian"
    updates = run.get("privacy.updates") == "gaussian"
    return {
        (True, False): "statistics DP",
        (False, True): "update DP",
        (True, True): "statistics + update DP",
    }.get((stats, updates), "")


def run_epsilon(run: Run) -> float | None:
    """The largest epsilon a client reached at the end of ``run``; ``None`` without any."""
    found = []
    stats = fold(run.metrics, "privacy", "epsilon_stats")
    if stats:
        found.append(max(stats[max(stats)].values()))
    updates = fold(run.metrics, "server", "dp/epsilon_updates_max")
    if updates:
        found.append(updates[max(updates)][SERVER_CLIENT])
    return max(found) if found else None
