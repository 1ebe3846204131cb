"""The privacy-utility figure (fedamole.analysis.figure_privacy): one line per algorithm and
mechanism at the epsilon each run reached, runs without a mechanism dashed, and the old eta
figure still drawn for the paper's heuristic."""

from __future__ import annotations

import json

import pytest

import fedamole.analysis.plots as plots
from fedamole.analysis.privacy_runs import mechanisms, run_epsilon
from fedamole.analysis.results import load_runs
from fedamole.config import dump, load

BASE = ("federation.num_clients=2", "mole.num_experts=6", "mole.clients_per_expert=1")
STATS = ("federation.privacy=gaussian",)
UPDATES = ("privacy.updates=gaussian", "privacy.delta=0.01")


def _rec(rnd, client, split, metric, value):
    return {"round": rnd, "client": client, "split": split, "metric": metric, "value": value}


def _run(root, name, *overrides, score, eps_stats=None, eps_updates=None):
    """A run directory: the config, both clients' round-2 ``score``, each client's final
    statistics epsilon, the server's update epsilon (rounds 1 and 2)."""
    path = root / name
    path.mkdir(parents=True)
    dump(load(overrides=[*BASE, *overrides]), path / "config.toml")
    rec = [_rec(2, c, "test", "score", score) for c in (0, 1)]
    rec += [_rec(2, c, "privacy", "epsilon_stats", v) for c, v in enumerate(eps_stats or [])]
    if eps_updates is not None:
        rec.append(_rec(1, -1, "server", "dp/epsilon_updates_max", eps_updates / 2))
        rec.append(_rec(2, -1, "server", "dp/epsilon_updates_max", eps_updates))
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rec) + "\n")
    (path / "done.json").write_text("{}")
    return path


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "runs"
    for eps in (1, 4):
        _run(
            root,
            f"s{eps}",
            *STATS,
            f"privacy.epsilon={eps}",
            score=0.2 + eps / 100,
            eps_stats=[eps * 0.99, eps * 0.98],
        )
        _run(
            root,
            f"u{eps}",
            *UPDATES,
            f"privacy.update_epsilon={eps}",
            score=0.3,
            eps_updates=eps * 0.999,
        )
        _run(
            root,
            f"b{eps}",
            *STATS,
            *UPDATES,
            f"privacy.epsilon={eps}",
            f"privacy.update_epsilon={eps}",
            score=0.1,
            eps_stats=[eps * 0.9, eps * 0.9],
            eps_updates=eps * 0.95,
        )
        _run(
            root,
            f"fedit{eps}",
            "federation.algorithm=fedit",
            *UPDATES,
            f"privacy.update_epsilon={eps}",
            score=0.5,
            eps_updates=eps * 0.99,
        )
    _run(root, "off", score=0.6)
    _run(root, "fedit_off", "federation.algorithm=fedit", score=0.7)
    return root  # fmt: skip


def test_epsilon_is_the_largest_a_client_reached(sweep):
    runs = {r.name: r for r in load_runs([sweep])}
    assert run_epsilon(runs["s4"]) == pytest.approx(3.96)
    assert run_epsilon(runs["u4"]) == pytest.approx(3.996)  # the last round's, not the first
    assert run_epsilon(runs["b4"]) == pytest.approx(3.8)  # the larger of the two mechanisms
    assert run_epsilon(runs["off"]) is None
    assert mechanisms(runs["b1"]) == "statistics + update DP" and mechanisms(runs["off"]) == ""


def test_one_line_per_arm_at_the_reached_epsilons(sweep, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, *a, **k: figures.append(fig) or [])
    plots.plot("privacy", [sweep], tmp_path / "out")
    (fig,) = figures
    ax = fig.axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}  # the error-bar plots
    arms = {
        "FedAMoLE (statistics DP)": ([0.99, 3.96], [21.0, 24.0]),
        "FedAMoLE (update DP)": ([0.999, 3.996], [30.0, 30.0]),
        "FedAMoLE (statistics + update DP)": ([0.95, 3.8], [10.0, 10.0]),
    }
    for label, (x, y) in arms.items():
        assert list(lines[label].get_xdata()) == pytest.approx(x)
        assert list(lines[label].get_ydata()) == pytest.approx(y)
    fedit = [label for label in lines if label.startswith("FedIT") and "update DP" in label]
    assert len(fedit) == 1
    dashed = {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() == "--"}
    assert {label.removesuffix(" (no DP)") for label in dashed} >= {"FedAMoLE"}
    assert any(list(line.get_ydata()) == [70.0, 70.0] for line in dashed.values())
    assert ax.get_xscale() == "log"


def test_the_report_has_an_epsilon_column_only_with_dp_runs(sweep, tmp_path):
    from fedamole.analysis.report import build_report, format_csv, format_markdown

    report = build_report([sweep], round_mode="last")
    by_run = {key: cell.mean for key, cell in report.epsilon.items()}
    assert sorted(by_run.values()) == pytest.approx(
        sorted([0.99, 3.96, 0.999, 3.996, 0.95, 3.8, 0.99, 3.96])
    )
    text = format_markdown(report)
    assert "| epsilon |" in text
    assert format_csv(report).count("\nepsilon,") == len(by_run)
    plain = tmp_path / "plain"
    _run(plain, "off", score=0.6)
    assert "epsilon" not in format_markdown(build_report([plain], round_mode="last"))
