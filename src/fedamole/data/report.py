"""Partition report: per-client split sizes and category histograms, as text and as a plot.

Backs the CLI command ``fedamole partition CONFIG [--plot FILE]`` (docs/data.md#partitions). The
plot is a stacked bar per client of its category shares (all four splits together), with each
client's example count under its bar, drawn on a bare :class:`matplotlib.figure.Figure` (Agg
canvas), so no pyplot state or display is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedamole.config import Config
from fedamole.data import load_federated_data
from fedamole.data.types import ClientData, FederatedData

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["category_counts", "describe_partition", "partition_table", "plot_partition"]

_SPLITS = ("train", "embedding", "eval", "test")


def _all_examples(client: ClientData) -> tuple:
    return client.train + client.embedding + client.eval + client.test


def category_counts(data: FederatedData) -> np.ndarray:
    """Examples per client and category, shape (N, C), C in ``data.categories`` order.

    These are the partition's counts (``meta["partition_counts"]``, before the split caps drop
    examples) when present, otherwise the examples held in the four splits.
    """
    if "partition_counts" in data.meta:
        return np.asarray(data.meta["partition_counts"], dtype=np.int64)  # (N, C)
    index = {name: j for j, name in enumerate(data.categories)}
    counts = np.zeros((len(data.clients), len(data.categories)), dtype=np.int64)  # (N, C)
    for i, client in enumerate(data.clients):
        for ex in _all_examples(client):
            counts[i, index[ex.category]] += 1
    return counts


def partition_table(data: FederatedData) -> str:
    """A fixed-width table, one row per client: split sizes, total and category counts.

    ``total`` and the category counts are the partition's, before the split caps
    (:func:`category_counts`); only non-zero categories are listed. The last lines give the mean
    per-client largest-category share (1/C for a uniform spread, 1 when each client holds one
    category) and the quantity spread (min/max client size).
    """
    counts = category_counts(data)  # (N, C)
    header = (
        f"{'client':>6} {'train':>6} {'embed':>6} {'eval':>6} {'test':>6} {'total':>6}  categories"
    )
    lines = [header, "-" * len(header)]
    for i, client in enumerate(data.clients):
        sizes = " ".join(f"{len(getattr(client, s)):>6}" for s in _SPLITS)
        hist = ", ".join(f"{data.categories[j]}:{counts[i, j]}" for j in np.flatnonzero(counts[i]))
        lines.append(f"{i:>6} {sizes} {counts[i].sum():>6}  {hist}")
    totals = counts.sum(axis=1)  # (N,)
    share = counts.max(axis=1) / np.maximum(totals, 1)  # (N,)
    uniform = 1 / len(data.categories)
    lines += [
        "",
        f"dataset {data.dataset}: {data.meta.get('num_examples', '?')} examples, "
        f"{len(data.categories)} categories, {len(data.clients)} clients, "
        f"{data.meta.get('unassigned', 0)} unassigned",
        f"mean largest-category share {share.mean():.3f} (uniform: {uniform:.3f}); "
        f"client sizes {totals.min()}..{totals.max()}",
    ]
    return "\n".join(lines)


def plot_partition(data: FederatedData, path: Path, *, title: str | None = None) -> Figure:
    """Write a stacked-bar PNG of each client's category shares (:func:`category_counts`); returns
    the figure.

    Shares hide how much data a client has, so each tick label gives the client's example count
    (``n=...``, the partition's, as the ``total`` column of :func:`partition_table`) under its
    client id. Bars start at 0, the share axis spans 0-1. Categories that no client holds (e.g.
    tasks past ``num_clients * tasks_per_client``) are left out of the bars and the legend.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    counts = category_counts(data)  # (N, C)
    totals = counts.sum(axis=1)  # (N,)
    used = np.flatnonzero(counts.sum(axis=0))  # (C',) categories some client holds
    shares = counts[:, used] / np.maximum(totals[:, None], 1)  # (N, C')
    num_cats = len(used)
    cmap = colormaps["tab10" if num_cats <= 10 else "tab20" if num_cats <= 20 else "turbo"]
    colors = cmap(np.linspace(0, 1, num_cats)) if num_cats > 20 else cmap.colors[:num_cats]
    fig = Figure(figsize=(max(6.0, 0.5 * len(data.clients) + 3), 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(data.clients))
    bottom = np.zeros(len(data.clients))
    for j, cat in enumerate(used):
        ax.bar(x, shares[:, j], bottom=bottom, color=colors[j], label=data.categories[cat])
        bottom += shares[:, j]
    ax.set_xticks(x, [f"{i}\nn={n}" for i, n in zip(x, totals, strict=True)], fontsize="small")
    ax.set_xlabel("client (n: its examples in the partition)")
    ax.set_ylabel("share of the client's examples")
    ax.set_ylim(0, 1)
    ax.set_title(title or f"{data.dataset}: category shares per client")
    ax.legend(
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize="small",
        title="category",
        ncols=1 if num_cats <= 20 else 2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig


def describe_partition(cfg: Config, plot: Path | None = None) -> str:
    """Load and partition the data of ``cfg`` and describe the result.

    Args:
        cfg: a validated config.
        plot: when given, also write the stacked-bar PNG there.

    Returns:
        The table of :func:`partition_table`, preceded by a one-line scenario summary.

    Raises:
        DataError: whatever :func:`fedamole.data.load_federated_data` raises.
    """
    data = load_federated_data(cfg)
    p = cfg.partition
    detail = {"dirichlet": f" alpha={p.alpha}", "task": f" k={p.tasks_per_client}"}.get(p.kind, "")
    scenario = f"{cfg.data.dataset}, {p.kind}{detail}, seed {data.meta['seed']}"
    if plot is not None:
        plot_partition(data, Path(plot), title=f"{scenario}: category shares per client")
    return f"partition: {scenario}\n\n{partition_table(data)}"
