"""The paper's figures from run directories (docs/algorithm.md#experiments; v3 figure numbers),
PNG and SVG.

One function per figure; each takes loaded runs, writes ``<out>/<figure>.png`` and ``.svg`` and
returns the paths. Figures are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no
global backend state). Values are the client-mean score × 100 per seed (best or last round,
docs/algorithm.md#reported-metrics; the reference's plots use the last round), then mean ± sample
std over seeds.

| figure | shows | runs it needs |
|---|---|---|
| ``rounds`` | metric per round, one line per method, a panel per scenario (Fig. 6) | any |
| ``clients`` | metric vs number of clients N, one line per method (Fig. 7) | N varies |
| ``alpha`` | metric vs Dirichlet α, one line per method, a panel per dataset (Fig. 10) | α varies |
| ``sensitivity`` | metric vs learning rate, one line per k_c (Fig. 9a) | FedAMoLE, k_c × lr |
| ``heatmap`` | metric over E × M_max (Fig. 9b, a heatmap instead of a 3-D surface) | FedAMoLE |
| ``ablation`` | bars per method, a panel per scenario (Fig. 2 of v3) | any |
| ``privacy`` | metric vs noise rate η, no-noise line dashed (Fig. 11) | FedAMoLE(-DP) |
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
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fedamole.analysis.results import (
    METHOD_ORDER,
    SCORE_LABEL,
    Entry,
    RoundMode,
    Run,
    entries,
    load_runs,
    mean_std,
    method_sort_key,
    metric_name,
    scenario_sort_key,
    score_definition,
)
from fedamole.rundir import RunDir

__all__ = ["FIGURES", "plot"]

FORMATS = ("png", "svg")
SCORE_RANGE = (0.0, 100.0)  # a score × 100
SPREAD = "± 1 std over seeds (sample std), clipped to 0-100"


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
        return plot_routing(runs, Path(out), round_mode, projection=projection)
    return FIGURES[figure](runs, Path(out), round_mode)


def plot_rounds(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Fig. 6: client-mean score per round, mean over seeds with a ± 1 std band clipped to 0-100
    (the legend says so); one y-label for every panel, the caption defines the score."""
    items = _need(entries(runs), "test scores")
    fig, axes = _panels(_scenarios(items))
    color = _palette(items)
    units = {}
    for ax, (scenario, group) in zip(axes, _by_scenario(items), strict=False):
        units[scenario] = metric_name(group)
        for method, seeds in _by_method(group):
            per_round: dict[int, list[float]] = {}
            for e in seeds:
                for rnd, value in e.run.mean_by_round(e.split).items():
                    per_round.setdefault(rnd, []).append(value * 100)
            x = sorted(per_round)
            stats = [mean_std(per_round[r]) for r in x]
            y = np.array([s[0] for s in stats])
            sd = np.array([s[1] or 0.0 for s in stats])
            ax.plot(x, y, marker="o", ms=3, label=method, color=color[method])
            low, high = _clip_band(y, sd)
            ax.fill_between(x, low, high, alpha=0.15, color=color[method])
        _style(ax, scenario, "round", SCORE_LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    band = Patch(facecolor="grey", alpha=0.3, label=f"band: {SPREAD}")
    caption = f"Lines: mean over seeds per round. {score_definition(units)}"
    return _save(fig, axes, out, "rounds", extra=[band], caption=caption)


def plot_clients(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Fig. 7: score vs number of clients; FedAMoLE's pool sizing may change with N."""
    items = entries(runs, ignore=("federation.num_clients", "mole"))
    return _versus(items, "federation.num_clients", "number of clients N", out, "clients", mode)


def plot_alpha(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Fig. 10: score vs Dirichlet concentration α, a panel per dataset."""
    items = [e for e in entries(runs) if e.run.get("partition.kind") == "dirichlet"]
    for e in items:
        e.scenario = e.scenario.split(" α=")[0]
    return _versus(items, "partition.alpha", "Dirichlet α", out, "alpha", mode, log=True)


def plot_sensitivity(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Fig. 9a: FedAMoLE's score vs learning rate, one line per k_c (clients per expert)."""
    items = _fedamole(runs, ("train.lr", "mole.clients_per_expert"))
    for e in items:  # keep a variant suffix, if any, so that other settings never pool
        e.method = f"k_c = {e.run.get('mole.clients_per_expert')}{e.method[len(e.base_method) :]}"
    return _versus(items, "train.lr", "learning rate η", out, "sensitivity", mode, log=True)


def plot_heatmap(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Fig. 9b: FedAMoLE's score over experts per module E × max experts per client M_max."""
    items = _fedamole(runs, ("mole.num_experts", "mole.max_experts_per_client"))
    for key, what in (
        ("mole.num_experts", "experts per module E"),
        ("mole.max_experts_per_client", "max experts per client M_max"),
    ):
        _warn_constant(items, key, what, "heatmap")
    fig, axes = _panels(_scenarios(items), width=4.6)
    units = {}
    for ax, (scenario, group) in zip(axes, _by_scenario(items), strict=False):
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
    return _save(fig, axes, out, "heatmap", legend=False, caption=caption)


def plot_ablation(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Ablation bars (Fig. 2 of v3): one bar per method, mean ± std over seeds. Bars start at 0,
    whiskers are clipped to 0-100 and each bar is labelled with its mean."""
    items = _need(entries(runs), "test scores")
    fig, axes = _panels(_scenarios(items))
    color = _palette(items)
    units = {}
    for ax, (scenario, group) in zip(axes, _by_scenario(items), strict=False):
        units[scenario] = metric_name(group)
        names, means, stds = [], [], []
        for method, seeds in _by_method(group):
            values = [v[1] * 100 for e in seeds if (v := e.value(mode)) is not None]
            if not values:
                continue
            mean, std, _ = mean_std(values)
            names.append(method)
            means.append(mean)
            stds.append(std or 0.0)
        x = np.arange(len(names))
        yerr = _clip_yerr(np.array(means), np.array(stds))
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
    return _save(fig, axes, out, "ablation", legend=False, caption=caption)


def plot_privacy(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Fig. 11: FedAMoLE-DP's score vs noise rate η (smaller = more noise); FedAMoLE dashed."""
    items = _fedamole(runs, ("federation.privacy", "federation.privacy_eta"), dp=True)
    private = [e for e in items if e.run.get("federation.privacy") is True]
    _need(private, "FedAMoLE runs with federation.privacy = true")
    for e in items:
        e.method = "FedAMoLE-DP"
    paths = _versus(
        private,
        "federation.privacy_eta",
        "noise rate η",
        out,
        "privacy",
        mode,
        log=True,
        reference=[e for e in items if e not in private],
    )
    return paths


def plot_experts(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """Domain experts held per client per round (mean over modules), one figure per run: a
    client × round heatmap and the last round's bars with the min-max over modules."""
    paths = []
    with_assignments = [(r, x) for r in runs if (x := r.experts_by_round())]
    _need(with_assignments, "assignments/round_NNN.json files (FedAMoLE runs)")
    for run, by_round in with_assignments:
        rounds = sorted(by_round)
        clients = sorted({c for per in by_round.values() for c in per})
        grid = np.array([[np.mean(by_round[r].get(c, [np.nan])) for r in rounds] for c in clients])
        observed = max(n for per in by_round.values() for ids in per.values() for n in ids)
        vmax, scale = _most_experts(run, observed)
        fig = Figure(figsize=(10, 3.6))
        left, right = fig.subplots(1, 2)
        image = left.imshow(grid, aspect="auto", cmap="magma", origin="lower", vmin=0, vmax=vmax)
        left.set_xticks(range(len(rounds))[:: max(1, len(rounds) // 15)])
        left.set_xticklabels([str(r) for r in rounds][:: max(1, len(rounds) // 15)])
        left.set_yticks(range(len(clients))[:: max(1, len(clients) // 15)])
        left.set_yticklabels([str(c) for c in clients][:: max(1, len(clients) // 15)])
        left.set_xlabel("round")
        left.set_ylabel("client")
        left.set_title("experts held (mean over modules)")
        fig.colorbar(image, ax=left, label=f"domain experts per module\n(scale 0 to {scale})")
        last = by_round[rounds[-1]]
        counts = [last.get(c, [0]) for c in clients]
        mean = np.array([np.mean(c) for c in counts])
        err = np.array(
            [
                [m - min(c) for m, c in zip(mean, counts, strict=True)],
                [max(c) - m for m, c in zip(mean, counts, strict=True)],
            ]
        )
        right.bar(clients, mean, yerr=err, capsize=3, color="tab:purple")
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_ylim(0, vmax * 1.05)
        right.set_xlabel("client")
        right.set_ylabel("domain experts per module")
        right.set_title(f"round {rounds[-1]} (bars: mean, whiskers: min-max)")
        fig.suptitle(run.name, fontsize=9)
        paths += _save(fig, [left, right], out, f"experts_{run.name}", legend=False)
    return paths


RSEA_PANELS = (
    ("rsea/group_purity", "group purity", "share of co-holding pairs with related data"),
    ("rsea/retention", "retention", "share of expert-holder pairs kept"),
    ("rsea/affinity_spread", "affinity spread", "mean (max - min) affinity over clients"),
)


def plot_rsea(runs: list[Run], out: Path, mode: RoundMode) -> list[Path]:
    """RSEA's diagnostics per round (``server/rsea/...``), one line per method (mean over seeds,
    ± std band): group purity with its chance level (grey, dashed), retention, affinity spread.
    Purity and retention span their range, 0 to 1; the spread's axis starts at 0."""
    items = [e for e in entries(runs) if e.run.server_metric("rsea/retention")]
    _need(items, "RSEA diagnostics (server/rsea/... records: FedAMoLE runs)")
    fig, axes = _panels(len(RSEA_PANELS))
    color = _palette(items)
    for ax, (metric, title, ylabel) in zip(axes, RSEA_PANELS, strict=True):
        for method, seeds in _by_method(items):
            series = [e.run.server_metric(metric) for e in seeds]
            rounds = sorted({r for s in series for r in s})
            if not rounds:
                continue
            stats = [mean_std([s[r] for s in series if r in s]) for r in rounds]
            y = np.array([m for m, _, _ in stats])
            sd = np.array([d or 0.0 for _, d, _ in stats])
            ax.plot(rounds, y, marker="o", ms=3, label=method, color=color[method])
            ax.fill_between(
                rounds,
                np.clip(y - sd, 0, 1),
                np.clip(y + sd, 0, 1),
                alpha=0.15,
                color=color[method],
            )
        if metric == "rsea/group_purity":
            chance = {
                r: v
                for e in items
                for r, v in e.run.server_metric("rsea/group_purity_chance").items()
            }
            if chance:
                x = sorted(chance)
                ax.plot(
                    x,
                    [chance[r] for r in x],
                    ls="--",
                    color="grey",
                    label="chance (random assignment)",
                )
        _style(ax, title, "round (assignment chosen after it)", ylabel)
        if metric == "rsea/affinity_spread":  # probabilities over N clients: spreads are small
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, axes, out, "rsea")


def plot_routing(
    runs: list[Run], out: Path, mode: RoundMode, *, projection: str = "pca"
) -> list[Path]:
    """Per-batch routing vectors of each client's training data at the end of the run, projected
    to 2-D, one panel per FedAMoLE run with a checkpoint.

    What it shows: how each client's batches route, in the common space of the E global experts.
    What it does not: a vector is 0 on the experts its client does not hold, so clients with
    different experts separate in the projection *by construction* (a FedAMoLE-R run with static
    random experts separates as well); the picture is no evidence about RSEA. The panel title
    gives instead :func:`~fedamole.analysis.routing.shared_expert_separability`: per client pair,
    the leave-one-out 1-NN accuracy of the pair's batches on the experts both hold (renormalised),
    averaged over pairs, with its chance level; the caption says all this.
    """
    from fedamole.analysis.routing import (
        explained_variance,
        project,
        routing_points,
        shared_expert_separability,
    )

    if projection not in ("pca", "tsne"):
        raise ValueError(f"projection must be pca or tsne, got {projection!r}")
    chosen = [
        r
        for r in runs
        if r.get("federation.algorithm") == "fedamole" and RunDir(r.path).checkpoints.is_dir()
    ]
    _need(chosen, "FedAMoLE runs with a checkpoints/ folder")
    fig, axes = _panels(len(chosen), width=4.4)
    cmap = matplotlib.colormaps["tab10" if len(chosen) and _max_clients(chosen) <= 10 else "tab20"]
    for ax, run in zip(axes, chosen, strict=True):
        found = routing_points(run.path)
        xy = project(found.points, projection, seed=int(run.get("run.seed", 0)))
        for client in np.unique(found.clients):
            at = found.clients == client
            ax.scatter(*xy[at].T, s=14, color=cmap(int(client) % cmap.N), label=f"client {client}")
        shared = shared_expert_separability(
            found.points, found.clients, found.num_experts, found.held or None
        )
        if shared.pairs:
            measure = (
                f"shared-expert 1-NN {shared.accuracy:.2f} (chance {shared.chance:.2f}, "
                f"{shared.pairs} client pairs)"
            )
        else:
            measure = "shared-expert 1-NN: no client pair shares 2 experts in a module"
        axis = "PC" if projection == "pca" else "t-SNE "
        extra = f", PC1+2 hold {explained_variance(found.points):.0%} of variance"
        _style(
            ax,
            f"{run.name}\nround {found.round}: {measure}",
            f"{axis}1" + (extra if projection == "pca" else ""),
            f"{axis}2",
        )
        ax.title.set_fontsize(8)
        ax.xaxis.label.set_fontsize(8)
    fig.suptitle(
        f"routing of each client's training batches ({len(found.modules)} modules sampled, "
        f"E = {found.num_experts})",
        fontsize=9,
    )
    caption = (
        "Points: one batch each, its routing probabilities (mean over tokens) over the E global "
        "experts, 0 where the client holds no expert, concatenated over the sampled modules. "
        "Clients holding different experts separate here by construction (a FedAMoLE-R run with "
        "static random experts separates too): this projection is not evidence about RSEA. "
        "Shared-expert 1-NN: per client pair, leave-one-out 1-NN accuracy of the pair's batches "
        "on the experts both hold (renormalised per module; modules sharing < 2 experts left "
        "out), mean over pairs; chance = its expectation under random labels. It shows whether "
        "clients mix the same experts differently, not whether RSEA chose them well."
    )
    return _save(fig, axes, out, "routing", caption=caption)


def _most_experts(run: Run, observed: int) -> tuple[int, str]:
    """The top of the experts colour scale and how it was chosen: the most domain experts a client
    can hold per module, ``min(M_max, E)`` from the run's config, or the observed maximum when
    that is larger or the config lacks them."""
    most, what = observed, f"{observed} = the most held"
    m_max, e = run.get("mole.max_experts_per_client"), run.get("mole.num_experts")
    if m_max is not None and e is not None and min(int(m_max), int(e)) >= observed:
        most = min(int(m_max), int(e))
        what = f"{most} = M_max" if int(m_max) <= int(e) else f"{most} = E"
    return max(most, 1), what


def _max_clients(runs: list[Run]) -> int:
    return max(int(r.get("federation.num_clients", 0)) for r in runs)


FIGURES: dict[str, Callable[[list[Run], Path, RoundMode], list[Path]]] = {
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


def _versus(
    items: list[Entry],
    key: str,
    xlabel: str,
    out: Path,
    stem: str,
    mode: RoundMode,
    *,
    log: bool = False,
    reference: list[Entry] | None = None,
) -> list[Path]:
    """A panel per scenario; per method the score vs config value ``key`` with std error bars;
    ``reference`` entries are drawn as a dashed horizontal line."""
    _need(items, f"runs with test scores and `{key}`")
    _warn_constant(items, key, xlabel, stem)
    fig, axes = _panels(_scenarios(items))
    color = _palette(items)
    units = {}
    for ax, (scenario, group) in zip(axes, _by_scenario(items), strict=False):
        units[scenario] = metric_name(group)
        for method, seeds in _by_method(group):
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
                yerr=_clip_yerr(y, np.array([s[1] or 0.0 for s in stats])),
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
        _style(ax, scenario, xlabel, SCORE_LABEL)
    caption = (
        f"Points: mean over seeds, per seed the {mode} round; error bars: {SPREAD}. "
        f"{score_definition(units)}"
    )
    return _save(fig, axes, out, stem, caption=caption)


def _fedamole(runs: list[Run], ignore: tuple[str, ...], dp: bool = False) -> list[Entry]:
    wanted = ("FedAMoLE", "FedAMoLE-DP") if dp else ("FedAMoLE",)
    items = [e for e in entries(runs, ignore=ignore) if e.base_method in wanted]
    return _need(items, "FedAMoLE runs (federation.algorithm = 'fedamole', no ablation flags)")


def _clip_band(
    y: np.ndarray, sd: np.ndarray, bounds: tuple[float, float] = SCORE_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of a ``y ± sd`` band, clipped to the metric's range."""
    return np.clip(y - sd, *bounds), np.clip(y + sd, *bounds)


def _clip_yerr(
    y: np.ndarray, sd: np.ndarray, bounds: tuple[float, float] = SCORE_RANGE
) -> np.ndarray:
    """``(2, n)`` asymmetric error bars of ``y ± sd`` that stay inside the metric's range."""
    low, high = _clip_band(y, sd, bounds)
    return np.stack([y - low, high - y]).reshape(2, -1)


def _warn_constant(items: list[Entry], key: str, what: str, stem: str) -> None:
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


def _need(items: list, what: str) -> list:
    if not items:
        raise ValueError(f"none of the given runs has {what}")
    return items


def _scenarios(items: list[Entry]) -> int:
    return len({e.scenario for e in items})


def _by_scenario(items: list[Entry]) -> list[tuple[str, list[Entry]]]:
    groups: dict[str, list[Entry]] = {}
    for e in sorted(items, key=scenario_sort_key):
        groups.setdefault(e.scenario, []).append(e)
    return list(groups.items())


def _by_method(items: list[Entry]) -> list[tuple[str, list[Entry]]]:
    groups: dict[str, list[Entry]] = {}
    for e in items:
        groups.setdefault(e.method, []).append(e)
    return sorted(groups.items(), key=lambda kv: method_sort_key(kv[0]))


def _panels(n: int, width: float = 4.2) -> tuple[Figure, list[Axes]]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _style(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _palette(items: list[Entry]) -> dict[str, tuple]:
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
