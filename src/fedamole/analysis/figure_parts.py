"""What the figures of :mod:`fedamole.analysis.plots` share: a drawn figure waiting to be saved
(:class:`Drawing`), the panels, colours and style, the grouping of entries by scenario and method,
spreads clipped to the metric's range, the warning for a swept setting that does not vary, and
the score-versus-setting figure every sweep uses (:func:`versus`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedamole.analysis.results import (
    METHOD_ORDER,
    SCORE_LABEL,
    Entry,
    RoundMode,
    Run,
    entries,
    mean_std,
    method_sort_key,
    metric_name,
    scenario_sort_key,
    score_definition,
)

__all__ = [
    "SCORE_RANGE",
    "SPREAD",
    "Drawing",
    "by_method",
    "by_scenario",
    "clip_band",
    "clip_yerr",
    "fedamole_entries",
    "need",
    "palette",
    "panels",
    "scenarios",
    "style",
    "versus",
    "warn_constant",
]

SCORE_RANGE = (0.0, 100.0)  # a score × 100
SPREAD = "± 1 std over seeds (sample std), clipped to 0-100"


@dataclass
class Drawing:
    """A drawn figure, saved as ``<stem>.png`` and ``.svg`` by :func:`fedamole.analysis.plots.plot`:
    the panels' legend entries (once each, unless ``legend`` is false) and ``extra`` entries (e.g.
    what a band means) right of the panels, ``caption`` below them."""

    fig: Figure
    axes: list[Axes]
    stem: str
    legend: bool = True
    extra: Sequence[Artist] = field(default_factory=tuple)
    caption: str | None = None


def versus(
    items: list[Entry],
    key: str,
    xlabel: str,
    stem: str,
    mode: RoundMode,
    *,
    log: bool = False,
    reference: list[Entry] | None = None,
) -> list[Drawing]:
    """A panel per scenario; per method the score vs config value ``key`` with std error bars;
    ``reference`` entries are drawn as a dashed horizontal line."""
    need(items, f"runs with test scores and `{key}`")
    warn_constant(items, key, xlabel, stem)
    fig, axes = panels(scenarios(items))
    color = palette(items)
    units = {}
    for ax, (scenario, group) in zip(axes, by_scenario(items), strict=False):
        units[scenario] = metric_name(group)
        for method, seeds in by_method(group):
            points: dict[float, list[float]] = {}
            for e in seeds:
                if (v := e.value(mode)) is not None:
                    points.setdefault(float(e.run.get(key)), []).append(v[1] * 100)
            x = sorted(points)
            stats = [mean_std(points[p]) for p in x]
            y = np.array([s[0] for s in stats])
            ax.errorbar(
                x,
                y,
                yerr=clip_yerr(y, np.array([s[1] or 0.0 for s in stats])),
                marker="o",
                ms=4,
                capsize=3,
                label=method,
                color=color[method],
            )
        ref = [
            v[1] * 100
            for e in reference or []
            if e.scenario == scenario and (v := e.value(mode)) is not None
        ]
        if ref:
            ax.axhline(mean_std(ref)[0], ls="--", color="gray", label="FedAMoLE (no noise)")
        if log:
            ax.set_xscale("log")
        style(ax, scenario, xlabel, SCORE_LABEL)
    caption = (
        f"Points: mean over seeds, per seed the {mode} round; error bars: {SPREAD}. "
        f"{score_definition(units)}"
    )
    return [Drawing(fig, axes, stem, caption=caption)]


def fedamole_entries(runs: list[Run], ignore: tuple[str, ...], dp: bool = False) -> list[Entry]:
    wanted = ("FedAMoLE", "FedAMoLE-DP") if dp else ("FedAMoLE",)
    items = [e for e in entries(runs, ignore=ignore) if e.base_method in wanted]
    return need(items, "FedAMoLE runs (federation.algorithm = 'fedamole', no ablation flags)")


def clip_band(
    y: np.ndarray, sd: np.ndarray, bounds: tuple[float, float] = SCORE_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of a ``y ± sd`` band, clipped to the metric's range."""
    return np.clip(y - sd, *bounds), np.clip(y + sd, *bounds)


def clip_yerr(
    y: np.ndarray, sd: np.ndarray, bounds: tuple[float, float] = SCORE_RANGE
) -> np.ndarray:
    """``(2, n)`` asymmetric error bars of ``y ± sd`` that stay inside the metric's range."""
    low, high = clip_band(y, sd, bounds)
    return np.stack([y - low, high - y]).reshape(2, -1)


def warn_constant(items: list[Entry], key: str, what: str, stem: str) -> None:
    """Warn when config value ``key`` (the figure's swept setting) takes one value only, over all
    runs or within some panel: the figure is drawn anyway, with one point per line there."""
    values: dict[str, set] = {}
    for e in items:
        values.setdefault(e.scenario, set()).add(repr(e.run.get(key)))
    flat = [v for s in sorted(values) for v in values[s]]
    if len(set(flat)) < 2:
        warnings.warn(
            f"the {stem} figure sweeps `{key}` ({what}), but it does not vary over the given "
            f"runs (all {', '.join(sorted(set(flat)))}): drawn with a single point per line",
            UserWarning,
            stacklevel=3,
        )
        return
    flat_panels = [s for s in sorted(values) if len(values[s]) < 2]
    if flat_panels:
        warnings.warn(
            f"the {stem} figure sweeps `{key}` ({what}), but it does not vary within "
            f"{', '.join(flat_panels)}: drawn there with a single point per line",
            UserWarning,
            stacklevel=3,
        )


def need(items: list, what: str) -> list:
    if not items:
        raise ValueError(f"none of the given runs has {what}")
    return items


def scenarios(items: list[Entry]) -> int:
    return len({e.scenario for e in items})


def by_scenario(items: list[Entry]) -> list[tuple[str, list[Entry]]]:
    groups: dict[str, list[Entry]] = {}
    for e in sorted(items, key=scenario_sort_key):
        groups.setdefault(e.scenario, []).append(e)
    return list(groups.items())


def by_method(items: list[Entry]) -> list[tuple[str, list[Entry]]]:
    groups: dict[str, list[Entry]] = {}
    for e in items:
        groups.setdefault(e.method, []).append(e)
    return sorted(groups.items(), key=lambda kv: method_sort_key(kv[0]))


def panels(n: int, width: float = 4.2) -> tuple[Figure, list[Axes]]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def style(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def palette(items: list[Entry]) -> dict[str, tuple]:
    """Fixed colours for the plain method labels (the same in every figure, FedAMoLE red);
    figures with other labels (variants, k_c lines) colour them in row order."""
    methods = sorted({e.method for e in items}, key=method_sort_key)
    cmap = matplotlib.colormaps["tab20"]
    if all(m in METHOD_ORDER for m in methods):
        others = [cmap(i) for i in range(20) if i not in (6, 7)]  # red is FedAMoLE's
        fixed = [m for m in METHOD_ORDER if m != "FedAMoLE"]
        return {
            m: matplotlib.colormaps["tab10"](3)
            if m == "FedAMoLE"
            else others[fixed.index(m) % len(others)]
            for m in methods
        }
    cycle = matplotlib.colormaps["tab10"]
    return {m: cycle(i % 10) for i, m in enumerate(methods)}
