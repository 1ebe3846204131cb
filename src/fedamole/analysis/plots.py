"""The paper's figures from run directories (docs/algorithm.md#experiments; v3 figure numbers),
PNG and SVG.

One function per figure; each takes loaded runs and returns what it drew
(:class:`~fedamole.analysis.figure_parts.Drawing`), which :func:`plot` writes as
``<out>/<figure>.png`` and ``.svg``; FedAMoLE's own figures are in
:mod:`~fedamole.analysis.figures_fedamole`, what all figures share in
:mod:`~fedamole.analysis.figure_parts`. Figures are drawn on :class:`matplotlib.figure.Figure`
objects (no pyplot, no global backend state). Values are the client-mean score × 100 per seed
(best or last round, docs/algorithm.md#reported-metrics; the reference's plots use the last
round), then mean ± sample std over seeds.

| figure | shows | runs it needs |
|---|---|---|
| ``rounds`` | metric per round, one line per method, a panel per scenario (Fig. 6) | any |
| ``clients`` | metric vs number of clients N, one line per method (Fig. 7) | N varies |
| ``alpha`` | metric vs Dirichlet α, one line per method, a panel per dataset (Fig. 10) | α varies |
| ``sensitivity`` | metric vs learning rate, one line per k_c (Fig. 9a) | FedAMoLE, k_c × lr |
| ``heatmap`` | metric over E × M_max (Fig. 9b, a heatmap instead of a 3-D surface) | FedAMoLE |
| ``ablation`` | bars per method, a panel per scenario (Fig. 2 of v3) | any |
| ``privacy`` | metric vs epsilon per arm (docs/privacy.md); else vs η (Fig. 11) | DP runs |
| ``experts`` | experts held per client per round, one figure per run (Fig. 8 bars) | FedAMoLE |
| ``routing`` | per-batch routing vectors in 2-D, colour = client (Fig. 8 left) | FedAMoLE |
| ``rsea`` | group purity (and chance), retention, affinity spread per round | FedAMoLE |

**Shared style.** Every score axis is labelled :data:`~fedamole.analysis.results.SCORE_LABEL`
and each score figure has a caption that defines the score (``score_definition``) and says what it
is per scenario (``metric_name``); bars start at 0; spreads over seeds (bands, error bars,
whiskers: ± 1 sample std) are clipped to the metric's range, 0-100 for scores × 100, and said so
in the legend or caption; colour scales start at 0 (0-100 for scores, 0 to the most experts a
client can hold for counts). A figure whose swept setting does not vary over the given runs is
still drawn, with a :class:`UserWarning` that names the setting.

``routing`` loads the model and each client's final state and reads client data
(:mod:`fedamole.analysis.routing`); it is the only figure that computes, so it takes seconds per run
on the embedded model. Its projection is PCA unless ``projection="tsne"`` (needs scikit-learn).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fedamole.analysis.figure_parts import (
    SCORE_RANGE,
    SPREAD,
    Drawing,
    by_method,
    by_scenario,
    clip_band,
    clip_yerr,
    fedamole_entries,
    need,
    palette,
    panels,
    scenarios,
    style,
    versus,
    warn_constant,
)
from fedamole.analysis.figure_privacy import plot_privacy_epsilon
from fedamole.analysis.figures_fedamole import plot_experts, plot_routing, plot_rsea
from fedamole.analysis.privacy_runs import mechanisms
from fedamole.analysis.results import (
    SCORE_LABEL,
    RoundMode,
    Run,
    entries,
    load_runs,
    mean_std,
    metric_name,
    score_definition,
)

__all__ = ["FIGURES", "plot"]

FORMATS = ("png", "svg")


def plot(
    figure: str,
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    round_mode: RoundMode = "last",
    projection: str = "pca",
) -> list[Path]:
    """Draw ``figure`` from the runs under ``paths`` into ``out``; returns the files written.

    ``projection`` (pca or tsne) is used by the ``routing`` figure only.

    Raises:
        ValueError: an unknown figure, or runs that lack what the figure shows.
    """
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; choose one of {sorted(FIGURES)}")
    runs = load_runs(paths)
    if not runs:
        raise ValueError(f"no run directory under {[str(p) for p in paths]}")
    Path(out).mkdir(parents=True, exist_ok=True)
    if figure == "routing":
        drawings = plot_routing(runs, round_mode, projection=projection)
    else:
        drawings = FIGURES[figure](runs, round_mode)
    return [
        path
        for d in drawings
        for path in _save(
            d.fig, d.axes, Path(out), d.stem, d.legend, extra=d.extra, caption=d.caption
        )
    ]


def plot_rounds(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Fig. 6: client-mean score per round, mean over seeds with a ± 1 std band clipped to 0-100
    (the legend says so); one y-label for every panel, the caption defines the score."""
    items = need(entries(runs), "test scores")
    fig, axes = panels(scenarios(items))
    color = palette(items)
    units = {}
    for ax, (scenario, group) in zip(axes, by_scenario(items), strict=False):
        units[scenario] = metric_name(group)
        for method, seeds in by_method(group):
            per_round: dict[int, list[float]] = {}
            for e in seeds:
                for rnd, value in e.run.mean_by_round(e.split).items():
                    per_round.setdefault(rnd, []).append(value * 100)
            x = sorted(per_round)
            stats = [mean_std(per_round[r]) for r in x]
            y = np.array([s[0] for s in stats])
            sd = np.array([s[1] or 0.0 for s in stats])
            ax.plot(x, y, marker="o", ms=3, label=method, color=color[method])
            low, high = clip_band(y, sd)
            ax.fill_between(x, low, high, alpha=0.15, color=color[method])
        style(ax, scenario, "round", SCORE_LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    band = Patch(facecolor="grey", alpha=0.3, label=f"band: {SPREAD}")
    caption = f"Lines: mean over seeds per round. {score_definition(units)}"
    return [Drawing(fig, axes, "rounds", extra=[band], caption=caption)]


def plot_clients(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Fig. 7: score vs number of clients; FedAMoLE's pool sizing may change with N."""
    items = entries(runs, ignore=("federation.num_clients", "mole"))
    return versus(items, "federation.num_clients", "number of clients N", "clients", mode)


def plot_alpha(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Fig. 10: score vs Dirichlet concentration α, a panel per dataset."""
    items = [e for e in entries(runs) if e.run.get("partition.kind") == "dirichlet"]
    for e in items:
        e.scenario = e.scenario.split(" α=")[0]
    return versus(items, "partition.alpha", "Dirichlet α", "alpha", mode, log=True)


def plot_sensitivity(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Fig. 9a: FedAMoLE's score vs learning rate, one line per k_c (clients per expert)."""
    items = fedamole_entries(runs, ("train.lr", "mole.clients_per_expert"))
    for e in items:  # keep a variant suffix, if any, so that other settings never pool
        e.method = f"k_c = {e.run.get('mole.clients_per_expert')}{e.method[len(e.base_method) :]}"
    return versus(items, "train.lr", "learning rate η", "sensitivity", mode, log=True)


def plot_heatmap(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Fig. 9b: FedAMoLE's score over experts per module E × max experts per client M_max."""
    items = fedamole_entries(runs, ("mole.num_experts", "mole.max_experts_per_client"))
    for key, what in (
        ("mole.num_experts", "experts per module E"),
        ("mole.max_experts_per_client", "max experts per client M_max"),
    ):
        warn_constant(items, key, what, "heatmap")
    fig, axes = panels(scenarios(items), width=4.6)
    units = {}
    for ax, (scenario, group) in zip(axes, by_scenario(items), strict=False):
        units[scenario] = metric_name(group)
        cells: dict[tuple[int, int], list[float]] = {}
        for e in group:
            if (v := e.value(mode)) is not None:
                key = (e.run.get("mole.num_experts"), e.run.get("mole.max_experts_per_client"))
                cells.setdefault(key, []).append(v[1] * 100)
        rows, cols = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
        grid = np.full((len(rows), len(cols)), np.nan)
        for (e_, m_), values in cells.items():
            grid[rows.index(e_), cols.index(m_)] = mean_std(values)[0]
        image = ax.imshow(
            grid,
            origin="lower",
            cmap="viridis",
            aspect="auto",
            vmin=SCORE_RANGE[0],
            vmax=SCORE_RANGE[1],
        )
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                shade = "k" if image.norm(value) > 0.6 else "w"
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=shade, fontsize=8)
        ax.set_xticks(range(len(cols)), [str(c) for c in cols])
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel("max experts per client M_max")
        ax.set_ylabel("experts per module E")
        ax.set_title(scenario)
        fig.colorbar(image, ax=ax, label=f"{SCORE_LABEL}, colour scale 0-100")
    caption = f"Cells: mean over seeds, per seed the {mode} round. {score_definition(units)}"
    return [Drawing(fig, axes, "heatmap", legend=False, caption=caption)]


def plot_ablation(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Ablation bars (Fig. 2 of v3): one bar per method, mean ± std over seeds. Bars start at 0,
    whiskers are clipped to 0-100 and each bar is labelled with its mean."""
    items = need(entries(runs), "test scores")
    fig, axes = panels(scenarios(items))
    color = palette(items)
    units = {}
    for ax, (scenario, group) in zip(axes, by_scenario(items), strict=False):
        units[scenario] = metric_name(group)
        names, means, stds = [], [], []
        for method, seeds in by_method(group):
            values = [v[1] * 100 for e in seeds if (v := e.value(mode)) is not None]
            if not values:
                continue
            mean, std, _ = mean_std(values)
            names.append(method)
            means.append(mean)
            stds.append(std or 0.0)
        x = np.arange(len(names))
        yerr = clip_yerr(np.array(means), np.array(stds))
        ax.bar(x, means, yerr=yerr, capsize=3, color=[color[m] for m in names])
        ax.set_xticks(x, names, rotation=30, ha="right")
        high = max((m + e for m, e in zip(means, yerr[1], strict=True)), default=0.0)
        top = min(SCORE_RANGE[1], 1.1 * high) if high > 0 else 1.0
        ax.set_ylim(0.0, top)
        for i, mean in enumerate(means):  # at the bar's foot, below the whisker
            ax.text(i, 0.02 * top, f"{mean:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_title(scenario)
        ax.set_ylabel(SCORE_LABEL)
        ax.grid(axis="y", alpha=0.3)
    caption = (
        f"Bars: mean over seeds (labelled), per seed the {mode} round; whiskers: {SPREAD}. "
        f"{score_definition(units)}"
    )
    return [Drawing(fig, axes, "ablation", legend=False, caption=caption)]


def plot_privacy(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Score against epsilon when any run uses a Gaussian mechanism
    (:func:`~fedamole.analysis.figure_privacy.plot_privacy_epsilon`); else Fig. 11:
    FedAMoLE-DP's score vs noise rate η (smaller = more noise), FedAMoLE dashed."""
    if any(mechanisms(run) for run in runs):
        return plot_privacy_epsilon(runs, mode)
    items = fedamole_entries(runs, ("federation.privacy", "federation.privacy_eta"), dp=True)
    # true in the configs of runs from before privacy named a mechanism
    private = [e for e in items if e.run.get("federation.privacy") in (True, "paper")]
    need(private, "FedAMoLE runs with federation.privacy = 'paper'")
    for e in items:
        e.method = "FedAMoLE-DP"
    return versus(
        private,
        "federation.privacy_eta",
        "noise rate η",
        "privacy",
        mode,
        log=True,
        reference=[e for e in items if e not in private],
    )


FIGURES: dict[str, Callable[[list[Run], RoundMode], list[Drawing]]] = {
    "ablation": plot_ablation,
    "alpha": plot_alpha,
    "clients": plot_clients,
    "experts": plot_experts,
    "heatmap": plot_heatmap,
    "privacy": plot_privacy,
    "rounds": plot_rounds,
    "routing": plot_routing,
    "rsea": plot_rsea,
    "sensitivity": plot_sensitivity,
}


def _save(
    fig: Figure,
    axes: list[Axes],
    out: Path,
    stem: str,
    legend: bool = True,
    *,
    extra: Sequence[Artist] = (),
    caption: str | None = None,
) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``.svg``: the panels' legend entries (once each) and
    ``extra`` entries (e.g. what a band means) right of the panels, ``caption`` below them."""
    if legend and axes:
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(h)
                    labels.append(label)
        handles += list(extra)
        labels += [h.get_label() for h in extra]
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    if caption:
        width = max(60, int(fig.get_figwidth() * 15))
        text = textwrap.fill(caption, width, break_on_hyphens=False)
        fig.text(0.01, 0.0, text, ha="left", va="top", fontsize=8)
    paths = [out / f"{stem}.{fmt}" for fmt in FORMATS]
    # Reproducible files: no creation date, and SVG element ids from a fixed salt, so the same runs
    # give byte-identical figures (committed results diff cleanly).
    with matplotlib.rc_context({"svg.hashsalt": "fedamole"}):
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Date": None})
    return paths
