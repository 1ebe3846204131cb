"""Config: defaults file matches the code, presets validate, every error is reported at once."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import ValidationError

from fedamole.config import Config, ConfigError, load, parse_overrides


def test_defaults_file_lists_every_field_with_the_code_defaults(repo):
    documented = tomllib.loads((repo / "configs" / "defaults.toml").read_text())
    assert documented == Config().to_dict()
    assert load(repo / "configs" / "defaults.toml") == Config()


def test_paper_preset_reproduces_spec_7_1(repo):
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
