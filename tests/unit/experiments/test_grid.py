"""Grid files: expansion, naming, shorthand axes, patches, excludes, extends, errors, the shipped
grids (the main grid lists 7 scenarios x 9 method runs x 3 seeds), and run status on disk."""

from __future__ import annotations

import json

import pytest
import tomli_w

from fedamole.algorithms import ALGORITHMS
from fedamole.analysis.results import method_labels
from fedamole.config import dump
from fedamole.experiments.grid import GridError, expand, load_grid, resolve_config, select
from fedamole.experiments.sweep import _slot_env, format_plan, plan, run_status


def _grid(tmp_path, body: str, name: str = "g.toml"):
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.fixture()
def smoke_grid(tmp_path, repo):
    return _grid(
        tmp_path,
        f"""
[sweep]
name = "t"
base = "{repo / "configs" / "smoke.toml"}"
out_dir = "{tmp_path / "out"}"

[overrides]
"train.steps" = 1

[axes.scenario]
task = {{ "partition.kind" = "task" }}
dir = {{ "partition.kind" = "dirichlet", "partition.alpha" = 0.5 }}

[axes.method]
A = {{ "federation.algorithm" = "fedamole" }}
R = {{ "federation.algorithm" = "fedamole", "federation.assignment" = "static" }}

[axes.seed]
"run.seed" = [1, 2]

[[patch]]
when = {{ scenario = "dir", method = ["R"] }}
set = {{ "train.lr" = 0.5 }}

[[exclude]]
scenario = "task"
method = "R"
seed = "seed2"
""",
    )


def test_expansion_is_the_product_in_axis_order_with_patch_and_exclude(smoke_grid, tmp_path):
    grid = load_grid(smoke_grid)
    runs = expand(grid)
    names = [r.name for r in runs]
    assert names == [
        "task__A__seed1",
        "task__A__seed2",
        "task__R__seed1",
        "dir__A__seed1",
        "dir__A__seed2",
        "dir__R__seed1",
        "dir__R__seed2",
    ]
    by_name = {r.name: r for r in runs}
    cfg = resolve_config(by_name["dir__R__seed2"])
    assert cfg.train.lr == 0.5 and cfg.train.steps == 1 and cfg.run.seed == 2
    assert cfg.federation.assignment == "static" and cfg.partition.alpha == 0.5
    assert cfg.run.name == "dir__R__seed2" and cfg.run.out_dir == str(tmp_path / "out")
    assert resolve_config(by_name["dir__A__seed1"]).train.lr == 1e-3  # smoke's own lr
    assert by_name["task__A__seed1"].run_dir == tmp_path / "out" / "task__A__seed1"


def test_select_filters_by_labels_and_rejects_unknown_ones(smoke_grid):
    grid = load_grid(smoke_grid)
    runs = select(grid, expand(grid), {"method": ["R"], "seed": ["seed1"]})
    assert [r.name for r in runs] == ["task__R__seed1", "dir__R__seed1"]
    with pytest.raises(GridError, match="no label 'Z'"):
        select(grid, expand(grid), {"method": ["Z"]})


def test_extends_replaces_axes_and_merges_overrides(smoke_grid, tmp_path):
    child = _grid(
        tmp_path,
        """
extends = "g.toml"
exclude = []
patch = []
[sweep]
name = "child"
[overrides]
"train.lr" = 0.01
[axes.seed]
"run.seed" = [5]
""",
        "child.toml",
    )
    grid = load_grid(child, out_dir=tmp_path / "elsewhere")
    assert grid.name == "child" and list(grid.axes) == ["scenario", "method", "seed"]
    runs = expand(grid)
    assert len(runs) == 4 and all(r.name.endswith("seed5") for r in runs)
    cfg = resolve_config(runs[0])
    assert cfg.train.lr == 0.01 and cfg.train.steps == 1
    assert runs[0].run_dir.parent == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[axes.a]\nx = 3\n", "expected a table of overrides"),
        ("[axes.a]\nx = { lr = 1 }\n", "must look like `section.field`"),
        ('[axes.a]\nx = { "train.lr" = 1 }\n[[exclude]]\nb = "x"\n', "unknown axis 'b'"),
        ('[axes.a]\nx = { "train.lr" = 1 }\n[[exclude]]\na = "y"\n', "has no label 'y'"),
        ('[sweep]\nbase = "nope.toml"\n', "does not exist"),
        ('[sweep]\nrun_name = "{b}"\n[axes.a]\nx = {}\n', "unknown axes ['b']"),
        ("[sweeps]\n", "unknown top-level key"),
        ('[sweep]\nlabel = "x"\n', "unknown [sweep] key"),
    ],
)
def test_grid_errors_name_the_problem(tmp_path, body, message):
    with pytest.raises(GridError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_grid(_grid(tmp_path, body))


def test_duplicate_names_and_two_configs_are_errors(tmp_path, repo):
    smoke = repo / "configs" / "smoke.toml"
    body = f"""
[sweep]
run_name = "same"
[axes.a]
x = {{ config = "{smoke}" }}
[axes.b]
y = {{ config = "{smoke.with_name("demo.toml")}" }}
z = {{ "train.lr" = 0.1 }}
"""
    with pytest.raises(GridError) as info:
        expand(load_grid(_grid(tmp_path, body)))
    text = str(info.value)
    assert "occurs twice" in text and "several axes set `config`" in text


def test_invalid_runs_are_listed_with_their_names(tmp_path, repo):
    body = f"""
[sweep]
base = "{repo / "configs" / "smoke.toml"}"
out_dir = "{tmp_path / "out"}"
[axes.method]
ok = {{ "federation.algorithm" = "fedamole" }}
bad = {{ "federation.algorithm" = "no_such_algorithm", "train.lr" = -1.0 }}
"""
    grid = load_grid(_grid(tmp_path, body))
    planned = {p.run.name: p for p in plan(grid)}
    assert planned["ok"].status == "new" and planned["bad"].status == "invalid"
    assert any("no_such_algorithm" in e for e in planned["bad"].errors)
    assert any("train.lr" in e for e in planned["bad"].errors)  # every error, not the first
    listing = format_plan(grid, list(planned.values()))
    assert "1 invalid run(s)" in listing and "  bad:" in listing


def test_run_status_new_partial_finished_changed(tmp_path, repo):
    from fedamole.config import load

    cfg = load(repo / "configs" / "smoke.toml")
    run_dir = tmp_path / "r"
    assert run_status(run_dir, cfg) == "new"
    run_dir.mkdir()
    dump(cfg, run_dir / "config.toml")
    assert run_status(run_dir, cfg) == "partial"
    (run_dir / "done.json").write_text(json.dumps({"last_round": 2}))
    assert run_status(run_dir, cfg) == "finished"
    assert run_status(run_dir, cfg.replace(**{"train.lr": 0.5})) == "changed"
    # A field added to the defaults after the run started (absent on disk) is no change.
    data = cfg.to_dict()
    del data["eval"]["rouge_impl"]
    (run_dir / "config.toml").write_text(tomli_w.dumps(data))
    assert run_status(run_dir, cfg) == "finished"
    (run_dir / "config.toml").write_text("[mole]\nno_such_field = 1\n")
    assert run_status(run_dir, cfg) == "changed"


def test_parallel_slots_get_gpus_round_robin():
    assert [_slot_env(s, ["0", "1"], 3)["CUDA_VISIBLE_DEVICES"] for s in range(3)] == [
        "0",
        "1",
        "0",
    ]


GRIDS = sorted(
    (__import__("pathlib").Path(__file__).parents[3] / "configs" / "sweeps").glob("*.toml")
)


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_shipped_grids_expand_and_validate(path, tmp_path):
    planned = plan(load_grid(path, out_dir=tmp_path))
    assert planned
    for p in planned:
        algorithm = p.run.overrides.get("federation.algorithm", "fedamole")
        if algorithm in ALGORITHMS:
            assert p.status == "new", (p.run.name, p.errors)
        else:  # a baseline not registered yet: reported, not crashed on
            assert p.status == "invalid" and any(algorithm in e for e in p.errors)
    if path.stem.endswith("_cpu") or path.stem == "cpu_quality":
        assert all(p.config is None or p.config.model.name.startswith("embedded:") for p in planned)


def test_main_grid_lists_seven_scenarios_by_every_method_by_three_seeds(repo, tmp_path):
    grid = load_grid(repo / "configs" / "sweeps" / "main.toml", out_dir=tmp_path)
    planned = plan(grid)
    assert len(grid.axes["scenario"]) == 7 and len(grid.axes["method"]) == 14
    assert len(planned) == 7 * 14 * 3
    assert {p.run.overrides["run.seed"] for p in planned} == {42, 62, 82}
    rows = set()
    for p in planned:
        config = {
            "federation": {"algorithm": p.run.overrides["federation.algorithm"]},
            "eval": {"timing": p.run.overrides.get("eval.timing", "personalized")},
        }
        rows |= {label for label, _ in method_labels(config)}
    assert rows == {
        "FedAMoLE", "FedIT", "FedIT-FT", "FedPrompt", "FedPrompt-FT", "FedPTuning",
        "FedPTuning-FT", "FDLoRA", "FFA-LoRA", "FedSA-LoRA", "FedDPA", "FlexLoRA", "HetLoRA",
        "FedALT", "FedLEASE", "pFedMoE", "Local",
    }  # fmt: skip
    valid = [p for p in planned if p.config is not None]
    datasets = {(p.config.data.dataset, p.config.partition.kind, p.config.partition.alpha)
                for p in valid}  # fmt: skip
    assert len(datasets) == 7 or len(valid) < len(planned)
    assert all(p.config.model.name == "meta-llama/Llama-3.2-1B" for p in valid)


def test_a_shipped_grid_is_found_by_name():
    from fedamole.config.files import shipped_config_dir
    from fedamole.experiments.grid import load_grid

    assert (
        load_grid("sweeps/rsea").path == (shipped_config_dir() / "sweeps" / "rsea.toml").resolve()
    )
    with pytest.raises(FileNotFoundError, match=r"name of a grid shipped.*sweeps/rsea[,\s]"):
        load_grid("sweeps/no_such_grid")


def test_a_lost_config_beside_a_checkpoint_of_the_same_config_resumes(tmp_path, repo):
    """A missing or damaged config.toml beside a checkpoint of the grid's config: ``partial``
    (the resume writes it again, docs/run-directory.md#what-a-resume-checks), not a new start
    that would move the run aside; beside a checkpoint of another config: ``changed``."""
    from fedamole.config import load
    from fedamole.rundir import save_checkpoint

    cfg = load(repo / "configs" / "smoke.toml")
    run_dir = tmp_path / "r"
    config = json.dumps(cfg.to_dict(), sort_keys=True)
    save_checkpoint(run_dir / "checkpoints", {"round": 1, "config": config})
    assert run_status(run_dir, cfg) == "partial"
    (run_dir / "config.toml").write_text("[federation\n")
    assert run_status(run_dir, cfg) == "partial"
    assert run_status(run_dir, cfg.replace(**{"train.lr": 0.5})) == "changed"
