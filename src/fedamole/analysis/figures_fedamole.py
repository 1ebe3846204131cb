"""FedAMoLE's own figures (see the table in :mod:`fedamole.analysis.plots`): the experts each
client holds per round, RSEA's diagnostics per round, and the routing of each client's batches.
Each returns its :class:`~fedamole.analysis.figure_parts.Drawing` objects; ``plot`` saves them.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedamole.analysis.figure_parts import Drawing, by_method, need, palette, panels, style
from fedamole.analysis.results import RoundMode, Run, entries, mean_std
from fedamole.rundir import RunDir

__all__ = ["RSEA_PANELS", "plot_experts", "plot_routing", "plot_rsea"]


def plot_experts(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """Domain experts held per client per round (mean over modules), one figure per run: a
    client × round heatmap and the last round's bars with the min-max over modules."""
    drawings = []
    with_assignments = [(r, x) for r in runs if (x := r.experts_by_round())]
    need(with_assignments, "assignments/round_NNN.json files (FedAMoLE runs)")
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
        drawings.append(Drawing(fig, [left, right], f"experts_{run.name}", legend=False))
    return drawings


RSEA_PANELS = (
    ("rsea/group_purity", "group purity", "share of co-holding pairs with related data"),
    ("rsea/retention", "retention", "share of expert-holder pairs kept"),
    ("rsea/affinity_spread", "affinity spread", "mean (max - min) affinity over clients"),
)


def plot_rsea(runs: list[Run], mode: RoundMode) -> list[Drawing]:
    """RSEA's diagnostics per round (``server/rsea/...``), one line per method (mean over seeds,
    ± std band): group purity with its chance level (grey, dashed), retention, affinity spread.
    Purity and retention span their range, 0 to 1; the spread's axis starts at 0."""
    items = [e for e in entries(runs) if e.run.server_metric("rsea/retention")]
    need(items, "RSEA diagnostics (server/rsea/... records: FedAMoLE runs)")
    fig, axes = panels(len(RSEA_PANELS))
    color = palette(items)
    for ax, (metric, title, ylabel) in zip(axes, RSEA_PANELS, strict=True):
        for method, seeds in by_method(items):
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
        style(ax, title, "round (assignment chosen after it)", ylabel)
        if metric == "rsea/affinity_spread":  # probabilities over N clients: spreads are small
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return [Drawing(fig, axes, "rsea")]


def plot_routing(runs: list[Run], mode: RoundMode, *, projection: str = "pca") -> list[Drawing]:
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
    need(chosen, "FedAMoLE runs with a checkpoints/ folder")
    fig, axes = panels(len(chosen), width=4.4)
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
        style(
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
    return [Drawing(fig, axes, "routing", caption=caption)]


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
