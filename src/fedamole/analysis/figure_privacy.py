"""The privacy-utility figure: test score against epsilon (docs/privacy.md#measured-cost).

One line per arm: an algorithm and the mechanisms its runs use (``statistics DP``:
``federation.privacy = "gaussian"``; ``update DP``: ``privacy.updates = "gaussian"``; or both).
A point's epsilon is the largest a client reached at the end of the run, read from its
``metrics.jsonl`` (``privacy/epsilon_stats`` per client, ``server/dp/epsilon_updates_max``); with
both mechanisms, the larger of the two (they protect different units: an example, a client).
Runs of the same algorithm without either mechanism are a dashed line of that arm's colour.
"""

from __future__ import annotations

import numpy as np

from fedamole.analysis.figure_parts import (
    SPREAD,
    Drawing,
    by_scenario,
    clip_yerr,
    need,
    panels,
    scenarios,
    style,
)
from fedamole.analysis.privacy_runs import mechanisms, run_epsilon
from fedamole.analysis.results import (
    SCORE_LABEL,
    Entry,
    RoundMode,
    Run,
    entries,
    mean_std,
    metric_name,
    score_definition,
)

__all__ = ["plot_privacy_epsilon"]

# The settings that tell the arms of one algorithm apart here: not separate methods.
_IGNORE = ("privacy", "federation.privacy", "federation.privacy_eta")


def plot_privacy_epsilon(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Score against epsilon (log scale), one line per algorithm and mechanism, a panel per
    scenario; each algorithm's runs without a mechanism dashed."""
    items = entries(runs, ignore=_IGNORE)
    private = need(
        [e for e in items if mechanisms(e.run)],
        "runs with federation.privacy = 'gaussian' or privacy.updates = 'gaussian'",
    )
    plain = [e for e in items if not mechanisms(e.run)]
    fig, axes = panels(scenarios(private))
    arms = sorted({_arm(e) for e in private})
    colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    units = {}
    for ax, (scenario, group) in zip(axes, by_scenario(private), strict=False):
        units[scenario] = metric_name(group)
        for arm in arms:
            points: dict[float, list[float]] = {}
            for e in group:
                v, eps = e.value(mode), run_epsilon(e.run)
                if _arm(e) == arm and v is not None and eps is not None:
                    points.setdefault(round(eps, 3), []).append(v[1] * 100)
            if not points:
                continue
            x = sorted(points)
            stats = [mean_std(points[p]) for p in x]
            y = np.array([s[0] for s in stats])
            sd = np.array([s[1] or 0.0 for s in stats])
            ax.errorbar(
                x,
                y,
                yerr=clip_yerr(y, sd),
                marker="o",
                ms=4,
                capsize=3,
                label=arm,
                color=colors[arm],
            )
        for method in sorted({e.method for e in plain if e.scenario == scenario}):
            ref = [
                v[1] * 100
                for e in plain
                if e.scenario == scenario and e.method == method and (v := e.value(mode))
            ]
            color = next((colors[a] for a in arms if a.startswith(f"{method} (")), "gray")
            if ref:
                ax.axhline(mean_std(ref)[0], ls="--", color=color, label=f"{method} (no DP)")
        ax.set_xscale("log")
        style(ax, scenario, "epsilon (largest per client at the end; log scale)", SCORE_LABEL)
    caption = (
        f"Points: mean over seeds, per seed the {mode} round; error bars: {SPREAD}. Epsilon: "
        "statistics DP per example of the embedding split, update DP per client, both: the "
        f"larger (delta in each run's privacy.delta). {score_definition(units)}"
    )
    return [Drawing(fig, axes, "privacy", caption=caption)]


def _arm(e: Entry) -> str:
    method = e.method.replace("-GDP", "").replace("-UDP", "")  # the mechanism is in brackets
    return f"{method} ({mechanisms(e.run)})"
