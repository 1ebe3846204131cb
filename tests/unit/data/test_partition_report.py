"""The partition report: table rows per client, statistics, the stacked-bar PNG with each
client's example count."""

from __future__ import annotations

import numpy as np

from fedamole.data import load_federated_data
from fedamole.data.report import (
    category_counts,
    describe_partition,
    partition_table,
    plot_partition,
)

from ._util import config


def _cfg(**partition):
    return config({"num_examples": 300}, partition, federation={"num_clients": 3})


def test_counts_are_the_partition_before_caps():
    data = load_federated_data(_cfg(kind="task", tasks_per_client=2))
    counts = category_counts(data)
    assert counts.shape == (3, 10)
    np.testing.assert_array_equal(counts[:, :6], np.kron(np.eye(3, dtype=int), [30, 30]))
    assert counts[:, 6:].sum() == 0


def test_table_has_a_row_per_client_and_the_skew_statistic():
    data = load_federated_data(_cfg(kind="task", tasks_per_client=2))
    lines = partition_table(data).splitlines()
    assert lines[0].split()[:6] == ["client", "train", "embed", "eval", "test", "total"]
    assert lines[2].split()[:6] == ["0", "45", "3", "6", "6", "60"]
    assert "arithmetic:30, date_format:30" in lines[2]
    assert any("mean largest-category share 0.500" in line for line in lines)


def test_describe_writes_plot(tmp_path):
    out = tmp_path / "plots" / "clients.png"
    text = describe_partition(_cfg(kind="dirichlet", alpha=0.5), plot=out)
    assert text.startswith("partition: synthetic, dirichlet alpha=0.5, seed 42")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_describe_without_plot_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    describe_partition(_cfg(kind="iid"))
    assert list(tmp_path.iterdir()) == []


def test_plot_shows_each_client_size(tmp_path):
    data = load_federated_data(_cfg(kind="dirichlet", alpha=0.5))
    totals = category_counts(data).sum(axis=1)
    assert len(set(totals.tolist())) > 1  # the shares alone would hide these differences
    fig = plot_partition(data, tmp_path / "p.png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [f"{i}\nn={n}" for i, n in enumerate(totals)]
    assert "n: its examples" in ax.get_xlabel()
    assert ax.get_ylim() == (0.0, 1.0) and all(bar.get_y() >= 0.0 for bar in ax.patches)
