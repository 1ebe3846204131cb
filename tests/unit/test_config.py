"""Config: defaults file matches the code, presets validate, every error is reported at once,
baseline tables replace the old flat keys, and the algorithm names match the registry."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from typing import get_args

import pytest
from pydantic import ValidationError

from fedamole.algorithms import ALGORITHMS
from fedamole.config import AlgorithmName, Config, ConfigError, dump, load, parse_overrides


def test_defaults_file_lists_every_field_with_the_code_defaults(repo):
    documented = tomllib.loads((repo / "configs" / "defaults.toml").read_text())
    assert documented == Config().to_dict()
    assert load(repo / "configs" / "defaults.toml") == Config()


def test_paper_preset_reproduces_the_paper_setting(repo):
    cfg = load(repo / "configs" / "paper" / "base.toml")
    assert cfg.model.name == "meta-llama/Llama-3.2-1B"
    assert (cfg.federation.num_clients, cfg.federation.rounds) == (10, 30)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.lr_decay) == (
        200,
        1,
        5e-5,
        0.99,
    )
    m = cfg.mole
    assert (m.num_experts, m.clients_per_expert, m.max_experts_per_client, m.top_k) == (30, 2, 8, 2)
    assert (m.rank, m.alpha, m.dropout, m.balance_coef) == (8, 16.0, 0.05, 0.001)
    assert m.target_modules == ("q_proj", "v_proj")
    assert cfg.train.adam_eps == 1e-6


@pytest.mark.parametrize("name", ["smoke.toml", "demo.toml"])
def test_shipped_configs_validate(repo, name):
    load(repo / "configs" / name)


def test_every_violation_is_reported_at_once(repo):
    with pytest.raises(ConfigError) as info:
        load(
            repo / "configs" / "paper" / "base.toml",
            ["mole.num_experts=3", "mole.top_k=5", "train.lr=-1", "mole.bogus=1"],
        )
    text = str(info.value)
    assert (
        "min_experts_per_client*num_clients (2*10=20) > num_experts*clients_per_expert (3*2=6)"
        in text
    )
    assert "`mole.top_k` (5) must be <= `mole.min_experts_per_client` (2)" in text
    assert "`train.lr` = -1" in text
    assert "`mole.bogus` is not a known field" in text
    assert len(info.value.errors) == 4


def test_upper_feasibility_bound():
    with pytest.raises(ConfigError, match=r"num_experts\*clients_per_expert \(90\*2=180\) > "):
        Config().replace(**{"mole.num_experts": 90})


def test_overrides_parse_toml_values():
    got = parse_overrides(
        ["train.lr=1e-4", "mole.target_modules=['q_proj']", "run.name=abc", "eval.test_init=false"]
    )
    assert got == {
        "train.lr": 1e-4,
        "mole.target_modules": ["q_proj"],
        "run.name": "abc",
        "eval.test_init": False,
    }
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_overrides(["nodot=1"])


def test_extends_merges_diffs(tmp_path):
    (tmp_path / "base.toml").write_text("[train]\nsteps = 5\nlr = 0.1\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[train]\nsteps = 7\n')
    cfg = load(tmp_path / "child.toml")
    assert (cfg.train.steps, cfg.train.lr) == (7, 0.1)


def test_config_is_frozen_and_missing_file_is_clear(tmp_path):
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.train.steps = 3  # type: ignore[misc]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_bad_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load(bad)


def test_baseline_tables_load_from_a_file_and_from_overrides(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(
        "[baselines]\nlora_rank = 4\n"
        "[baselines.fdlora]\nsync_every = 3\nouter_lr = 0.5\n"
        "[baselines.ptuning]\nreference_quirk = true\n"
    )
    b = load(path).baselines
    assert (b.lora_rank, b.fdlora.sync_every, b.fdlora.outer_lr) == (4, 3, 0.5)
    assert b.ptuning.reference_quirk and b.feddpa.local_steps is None
    assert b.fdlora.fusion_budget == 5  # the rest of the table keeps its defaults

    cfg = load(path, ["baselines.fdlora.sync_every=7", "baselines.feddpa.local_steps=4"])
    assert (cfg.baselines.fdlora.sync_every, cfg.baselines.fdlora.outer_lr) == (7, 0.5)
    assert cfg.baselines.feddpa.local_steps == 4
    assert cfg.replace(**{"baselines.fdlora.fusion_l1": 0.1}).baselines.fdlora.fusion_l1 == 0.1
    dump(cfg, tmp_path / "resolved.toml")
    assert load(tmp_path / "resolved.toml") == cfg


def test_an_old_flat_baseline_key_names_its_new_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(None, ["baselines.fdlora_sync_every=2"])
    assert info.value.errors == [
        "`baselines.fdlora_sync_every` has moved: use `baselines.fdlora.sync_every` "
        "(`sync_every` in a `[baselines.fdlora]` table)"
    ]

    old = tmp_path / "old.toml"
    old.write_text("[baselines]\nptuning_reference_quirk = true\nfdlora_outer_lr = 2.0\n")
    with pytest.raises(ConfigError) as info:
        load(old, ["baselines.feddpa_local_steps=3", "train.lr=-1", "mole.top_k=5"])
    errors = info.value.errors
    for new in ("ptuning.reference_quirk", "fdlora.outer_lr", "feddpa.local_steps"):
        assert sum(f"use `baselines.{new}`" in e for e in errors) == 1, errors
    assert any(e.startswith("`train.lr` = -1") for e in errors)  # reported with the others
    assert any(e.startswith("`mole.top_k` (5) must be <=") for e in errors)
    assert len(errors) == 5


def test_algorithm_names_are_the_registered_algorithms():
    assert set(get_args(AlgorithmName)) == set(ALGORITHMS)
    assert len(get_args(AlgorithmName)) == len(ALGORITHMS)


def test_validation_does_not_import_the_algorithms():
    code = (
        "import sys\nfrom fedamole.config import ConfigError, load\nload()\n"
        "try:\n    load(None, ['federation.algorithm=nope'])\nexcept ConfigError:\n    pass\n"
        "assert 'fedamole.algorithms' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=true", "`train.steps` = True: Value error, True is a boolean"),
        ("train.lr=false", "`train.lr` = False: Value error, False is a boolean"),
        ("partition.alpha=nan", "`partition.alpha` = nan: Input should be a finite number"),
        ("train.lr=inf", "`train.lr` = inf: Input should be a finite number"),
        ('run.name=""', "must be one folder name"),
        ('run.name="a/b"', "must be one folder name"),
        ('run.name=".."', "must be one folder name"),
    ],
)
def test_silent_coercions_are_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load(None, [override])
    assert message in str(err.value)


def test_booleans_still_set_boolean_fields():
    cfg = load(None, ["run.checkpoint=false", "mole.shared_expert=false"])
    assert cfg.run.checkpoint is False and cfg.mole.shared_expert is False


def test_unreadable_config_files_are_clear_errors(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    (tmp_path / "num.toml").write_text("extends = 5\n")
    (tmp_path / "latin1.toml").write_bytes('[run]\nname = "café"\n'.encode("latin-1"))
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "folder.toml").mkdir()
    cases = {
        "a.toml": "`extends` loops back to a file already read",
        "num.toml": "`extends` = 5 must be the path of another TOML file",
        "latin1.toml": "not UTF-8 text (byte 17)",
        "binary.toml": "not UTF-8 text (byte 0)",
        "folder.toml": "is a folder, not a config file",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(tmp_path / name)


def test_validate_checks_the_device_and_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="`model.device` = 'tpu9'.*'cuda:N'"):
        load(None, ["model.device=tpu9"])
    assert load(None, ["model.device=cuda:1"]).model.device == "cuda:1"
    missing = tmp_path / "no-model"
    with pytest.raises(ConfigError, match="no such folder"):
        load(None, [f'model.name="{missing}"'])
    assert load(None, ['model.name="org/some-model"']).model.name == "org/some-model"  # a hub id


def test_run_threads_is_a_positive_count_applied_by_build_runtime():
    import torch

    from fedamole.algorithms.runtime import set_threads

    assert Config().run.threads is None
    assert load(None, ["run.threads=1"]).run.threads == 1
    for bad in ("0", "-2", "true", "1.5"):
        with pytest.raises(ConfigError, match="run.threads"):
            load(None, [f"run.threads={bad}"])
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(None) == 1  # None leaves it as it is
    finally:
        torch.set_num_threads(before)


def test_a_field_absent_from_an_older_config_counts_as_its_default():
    """A run written before a field existed resumes (and a sweep skips it) when the field is at
    its default; a non-default value still differs."""
    from fedamole.config import Config, differing_fields

    cfg = Config()
    older = cfg.to_dict()
    del older["mole"]["rsea_stats"]
    assert differing_fields(older, cfg) == []
    assert differing_fields(cfg, older) == []
    assert differing_fields(older, cfg.replace(**{"mole.rsea_stats": "received"})) == [
        "mole.rsea_stats"
    ]
    older["mole"]["retired_field"] = 1  # a field that no longer exists still differs
    assert differing_fields(older, cfg) == ["mole.retired_field"]


def test_a_sweep_grid_given_as_a_config_says_how_to_run_it():
    from tests.conftest import REPO

    with pytest.raises(ConfigError, match=r"is a sweep grid .*fedamole sweep .*rsea\.toml"):
        load(REPO / "configs" / "sweeps" / "rsea.toml")


def test_fields_inside_sub_tables_are_compared_one_by_one():
    from fedamole.config import Config, differing_fields

    cfg = Config()
    older = cfg.to_dict()
    table = older["baselines"]["fdlora"]
    del table[sorted(table)[0]]  # a sub-table field an older version did not write
    assert differing_fields(older, cfg) == []
    lr = cfg.to_dict()["train"]["lr"]
    changed = cfg.replace(**{"train.lr": lr * 2})
    assert differing_fields(older, changed) == ["train.lr"]
