"""Sweeps, reports and figures end to end on tiny real runs (smoke config, 2 rounds of 1 step).

Grids swept once per module: ``main`` (2 scenarios x FedAMoLE, FedAMoLE-H x 2 seeds) and one
small grid per figure that varies a setting (client number, k_c x lr, E x M_max, privacy). The
tests check skip/resume, the report's numbers against values computed here directly from
``metrics.jsonl``/``comm.jsonl``, and that every figure renders.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics

import numpy as np
import pytest
from typer.testing import CliRunner

import fedamole.engines as engines
from fedamole.algorithms import ALGORITHMS
from fedamole.analysis.plots import FIGURES, plot
from fedamole.analysis.report import build_report, format_csv
from fedamole.analysis.results import find_run_dirs
from fedamole.cli import app
from fedamole.config import dump, load
from fedamole.experiments.grid import GridError, load_grid
from fedamole.experiments.sweep import plan, run_sweep
from fedamole.rundir import read_jsonl
from tests.conftest import result_records, run_killed

runner = CliRunner()

FIXED = """
[overrides]
"federation.rounds" = 2
"train.steps" = 1
"train.lr" = 0.05
"""

MAIN = """
[axes.scenario]
task = { "partition.kind" = "task" }
dir = { "partition.kind" = "dirichlet", "partition.alpha" = 1.0 }
[axes.method]
FedAMoLE = { "federation.algorithm" = "fedamole" }
FedAMoLE-H = { "federation.algorithm" = "fedamole", "mole.router" = "linear" }
[axes.seed]
"run.seed" = [1, 2]
"""

STUDIES = {  # one small grid per figure that needs a varied setting
    "clients": '"federation.num_clients" = [3, 4]',
    "sensitivity": '"mole.clients_per_expert" = [2, 3]\n[axes.lr]\n"train.lr" = [0.01, 0.05]',
    "heatmap": '"mole.num_experts" = [3, 4]\n[axes.M]\n"mole.max_experts_per_client" = [3, 4]',
    "privacy": """
eta1 = { "federation.privacy" = true, "federation.privacy_eta" = 1.0 }
eta100 = { "federation.privacy" = true, "federation.privacy_eta" = 100.0 }
off = { "federation.privacy" = false }""",
}


def _write_grid(folder, name, axes, repo, out):
    head = f'[sweep]\nname = "{name}"\nbase = "{repo / "configs" / "smoke.toml"}"\n'
    path = folder / f"{name}.toml"
    path.write_text(head + f'out_dir = "{out}"\n' + FIXED + axes)
    return path


@pytest.fixture(scope="module")
def swept(repo, tmp_path_factory):
    """Both grids, swept once: ``(grid path, its out dir)`` per grid."""
    folder = tmp_path_factory.mktemp("sweeps")
    grids = {}
    studies = {name: f"[axes.{name}]\n{axes}\n" for name, axes in STUDIES.items()}
    for name, axes in {"main": MAIN, **studies}.items():
        path = _write_grid(folder, name, axes, repo, folder / "runs" / name)
        result = run_sweep(load_grid(path))
        assert not result.failed, result.failed
        grids[name] = (path, folder / "runs" / name)
    return grids


def _records(run_dir):
    return [
        (r["round"], r["client"], r["split"], r["metric"], r["value"])
        for r in result_records(run_dir)
    ]


def test_sweep_finishes_every_run(swept):
    path, out = swept["main"]
    planned = plan(load_grid(path))
    assert len(planned) == 8 and {p.status for p in planned} == {"finished"}
    assert all((out / p.run.name / "done.json").is_file() for p in planned)


def test_a_second_sweep_skips_finished_runs(swept, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(engines, "run_experiment", refuse)
    result = run_sweep(load_grid(swept["main"][0]))
    assert result.ran == [] and not result.failed and len(result.skipped) == 8


def _killed_run(grid_path, out, name, monkeypatch):
    """Start run ``name`` of the grid in ``out`` and kill it in round 2 (round 1 checkpointed)."""
    grid = load_grid(grid_path, out_dir=out)
    (planned,) = [p for p in plan(grid) if p.run.name == name]
    run_killed(planned.config, planned.run.run_dir, kill_round=2)
    return grid


def test_partial_run_resumes_to_the_uninterrupted_result(swept, tmp_path, monkeypatch):
    path, out = swept["main"]
    name = "dir__FedAMoLE__seed1"
    grid = _killed_run(path, tmp_path, name, monkeypatch)
    (planned,) = plan(grid, {"scenario": ["dir"], "method": ["FedAMoLE"], "seed": ["seed1"]})
    assert (planned.status, planned.action) == ("partial", "resume")
    only = {"scenario": ["dir"], "method": ["FedAMoLE"], "seed": ["seed1"]}
    result = run_sweep(grid, only=only)
    assert result.ran == [name] and result.skipped == []
    assert _records(tmp_path / name) == _records(out / name)
    assert plan(grid, only)[0].status == "finished"


def test_partial_run_without_checkpoint_restarts_and_keeps_the_old_folder(
    swept, tmp_path, monkeypatch
):
    path, out = swept["main"]
    name = "task__FedAMoLE-H__seed2"
    grid = _killed_run(path, tmp_path, name, monkeypatch)
    shutil.rmtree(tmp_path / name / "checkpoints")
    only = {"scenario": ["task"], "method": ["FedAMoLE-H"], "seed": ["seed2"]}
    assert plan(grid, only)[0].action == "restart"
    assert run_sweep(grid, only=only).ran == [name]
    assert _records(tmp_path / name) == _records(out / name)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith(f"{name}.old-")]
    assert len(moved) == 1  # nothing is deleted ...
    assert find_run_dirs([tmp_path]) == [tmp_path / name]  # ... and reports skip it


def test_a_run_of_another_config_is_refused(swept, tmp_path):
    grid = load_grid(swept["main"][0], out_dir=tmp_path)
    first = plan(grid)[0]
    (tmp_path / first.run.name).mkdir()
    other = first.config.replace(**{"train.lr": 0.5})
    (tmp_path / first.run.name / "config.toml").write_text(
        (swept["main"][1] / first.run.name / "config.toml").read_text().replace("0.05", "0.5")
    )
    assert other.train.lr == 0.5 and plan(grid)[0].status == "changed"
    with pytest.raises(GridError, match="another config"):
        run_sweep(grid)


def _expected(out, mode):
    """(method, scenario) -> per-seed values x 100, computed from metrics.jsonl directly."""
    groups = {}
    for run_dir in sorted(p for p in out.iterdir() if (p / "done.json").exists()):
        by_round = {}
        for rec in read_jsonl(run_dir / "metrics.jsonl"):
            if rec["split"] == "test" and rec["metric"] == "score":
                by_round.setdefault(rec["round"], []).append(rec["value"])
        means = {r: sum(v) / len(v) for r, v in by_round.items()}
        value = max(means.values()) if mode == "best" else means[max(means)]
        scenario, method, _ = run_dir.name.split("__")
        label = {"task": "Synthetic 2 tasks/client", "dir": "Synthetic α=1"}[scenario]
        groups.setdefault((method, label), []).append(value * 100)
    return groups


@pytest.mark.parametrize("mode", ["best", "last"])
def test_report_numbers_equal_a_direct_computation(swept, mode):
    out = swept["main"][1]
    report = build_report([out], round_mode=mode, ours="FedAMoLE-H")
    expected = _expected(out, mode)
    assert set(report.cells) == set(expected)
    for key, values in expected.items():
        cell = report.cells[key]
        assert cell.mean == pytest.approx(statistics.mean(values))
        assert cell.std == pytest.approx(statistics.stdev(values)) and cell.n == 2
    for scenario in report.scenarios:
        ours = statistics.mean(expected["FedAMoLE-H", scenario])
        best = statistics.mean(expected["FedAMoLE", scenario])
        if best:
            assert report.gain[scenario] == pytest.approx((ours - best) / best * 100)
    for method in report.methods:
        per_scenario = [statistics.mean(expected[method, s]) for s in report.scenarios]
        assert report.average[method] == pytest.approx(statistics.mean(per_scenario))


def test_report_overhead_equals_comm_log(swept):
    out = swept["main"][1]
    report = build_report([out])
    run_dir = out / "task__FedAMoLE__seed1"
    up = sum(r["bytes"] for r in read_jsonl(run_dir / "comm.jsonl")
             if r["direction"] == "up" and r["round"] in (1, 2))  # fmt: skip
    mean_up, _, seconds = report.overhead["FedAMoLE", "Synthetic 2 tasks/client"]
    other = out / "task__FedAMoLE__seed2"
    up2 = sum(r["bytes"] for r in read_jsonl(other / "comm.jsonl")
              if r["direction"] == "up" and r["round"] in (1, 2))  # fmt: skip
    assert mean_up == pytest.approx((up + up2) / 2 / (2 * 3) / 1e6)
    assert seconds is not None and seconds > 0


def test_report_cli_prints_markdown_and_csv(swept):
    out = swept["main"][1]
    md = runner.invoke(app, ["report", str(out), "--round", "last"])
    assert md.exit_code == 0, md.output
    assert "| method" in md.output and "Synthetic α=1" in md.output and "gain (%)" in md.output
    assert "### Per client" in md.output and "MB/client/round" in md.output
    csv_out = runner.invoke(app, ["report", str(out), "--format", "csv"])
    assert csv_out.exit_code == 0
    assert csv_out.output.splitlines()[0] == "table,scenario,method,client,mean,std,n"
    assert csv_out.output == format_csv(build_report([out]))


def test_sweep_cli_dry_run_lists_statuses(swept):
    result = runner.invoke(app, ["sweep", str(swept["main"][0]), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "8 finished" in result.output and "dir__FedAMoLE-H__seed2" in result.output


@pytest.mark.parametrize("figure", sorted(FIGURES))
def test_every_figure_renders_png_and_svg(swept, figure, tmp_path):
    runs = swept[figure if figure in STUDIES else "main"][1]
    paths = plot(figure, [runs], tmp_path)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert pngs and len(paths) == 2 * len(pngs)
    for path in paths:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<?xml" in head
    if figure == "experts":
        assert len(pngs) == 8  # one per FedAMoLE run


def test_figures_are_byte_identical_when_redrawn(swept, tmp_path):
    first = plot("rounds", [swept["main"][1]], tmp_path / "a")
    second = plot("rounds", [swept["main"][1]], tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert b"<dc:date>" not in first[1].read_bytes()


def test_a_figure_without_its_runs_fails_clearly(swept, tmp_path):
    with pytest.raises(ValueError, match="privacy = 'paper'"):
        plot("privacy", [swept["main"][1]], tmp_path)
    result = runner.invoke(app, ["plot", "nope", str(swept["main"][1]), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown figure" in result.output


def test_plot_cli_writes_files(swept, tmp_path):
    result = runner.invoke(app, ["plot", "rounds", str(swept["main"][1]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rounds.png").is_file() and (tmp_path / "rounds.svg").is_file()


@pytest.mark.slow  # two subprocesses import torch and transformers
def test_parallel_jobs_run_as_subprocesses(repo, tmp_path):
    axes = '[axes.seed]\n"run.seed" = [3, 4]\n'
    path = _write_grid(tmp_path, "par", axes, repo, tmp_path / "runs")
    result = run_sweep(load_grid(path), jobs=2, devices=[])
    assert not result.failed, result.failed
    assert sorted(result.ran) == ["seed3", "seed4"]
    for name in ("seed3", "seed4"):
        assert json.loads((tmp_path / "runs" / name / "done.json").read_text())["last_round"] == 2
        assert (tmp_path / "runs" / "_sweep" / f"{name}.log").is_file()


@pytest.mark.skipif("fedit" not in ALGORITHMS, reason="the FedIT baseline is not registered")
def test_a_run_with_both_timings_gives_two_rows(repo, tmp_path):
    axes = '[axes.method]\nFedIT = { "federation.algorithm" = "fedit", "eval.timing" = "both" }\n'
    path = _write_grid(tmp_path, "both", axes, repo, tmp_path / "runs")
    assert not run_sweep(load_grid(path)).failed
    report = build_report([tmp_path / "runs"], round_mode="last")
    assert report.methods == ["FedIT", "FedIT-FT"]
    run_dir = tmp_path / "runs" / "FedIT"
    for method, split in (("FedIT", "test_global"), ("FedIT-FT", "test")):
        key = (split, "score", 2)
        records = read_jsonl(run_dir / "metrics.jsonl")
        values = [r["value"] for r in records if (r["split"], r["metric"], r["round"]) == key]
        assert report.cells[method, report.scenarios[0]].mean == pytest.approx(
            100 * sum(values) / len(values)
        )


def test_routing_vectors_are_probabilities_over_held_experts(swept):
    from fedamole.analysis.routing import client_separability, project, routing_points
    from fedamole.federated.messages import unpack_modules
    from fedamole.rundir import load_checkpoint

    run_dir = swept["main"][1] / "task__FedAMoLE__seed1"
    found = routing_points(run_dir, every=1, max_batches=3, batch_size=2)
    state = load_checkpoint(run_dir / "checkpoints")
    E = found.num_experts
    assert found.points.shape == (3 * 3, len(found.modules) * E)  # 3 clients x 3 batches
    assert found.clients.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    blocks = found.points.reshape(len(found.points), len(found.modules), E)
    np.testing.assert_allclose(blocks.sum(-1), 1.0, atol=1e-9)
    for row, client in zip(blocks, found.clients, strict=True):
        held = unpack_modules(state["clients"][int(client)]["modules"])
        for block, name in zip(row, found.modules, strict=True):
            absent = np.setdiff1d(np.arange(E), held[name].expert_ids.numpy())
            assert (block[absent] == 0).all() and (block > 0).sum() >= 2  # top-k = 2 of held
    sampled = routing_points(run_dir, every=2, max_batches=1)
    layers = {int(re.search(r"\d+", n).group()) for n in sampled.modules}
    assert layers and all(layer % 2 == 0 for layer in layers)
    xy = project(found.points)
    assert xy.shape == (9, 2)
    np.testing.assert_allclose(xy.mean(0), 0.0, atol=1e-9)
    assert 0.0 <= client_separability(found.points, found.clients) <= 1.0
    two = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]])
    assert client_separability(two, np.array([0, 0, 1, 1])) == 1.0
    assert client_separability(two, np.array([0, 1, 0, 1])) == 0.0


def test_routing_refuses_a_run_of_another_method(repo, tmp_path):
    from fedamole.analysis.routing import project, routing_points

    cfg = load(repo / "configs" / "smoke.toml", ["federation.algorithm=fedit"])
    dump(cfg, tmp_path / "config.toml")
    with pytest.raises(ValueError, match="routing needs a FedAMoLE run, this one ran 'fedit'"):
        routing_points(tmp_path)
    with pytest.raises(ValueError, match="projection must be one of"):
        project(np.zeros((3, 2)), "umap")
