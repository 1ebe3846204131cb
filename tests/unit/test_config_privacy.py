"""`federation.privacy` names a mechanism (old booleans keep their meaning) and `[privacy]`
refuses impossible combinations with the field, the value and the fix."""

from __future__ import annotations

import pytest

from fedamole.algorithms.fedamole_spec import ablation_flags
from fedamole.config import ConfigError, load


@pytest.mark.parametrize(("given", "meant"), [("true", "paper"), ("false", "none")])
def test_old_booleans_keep_their_meaning(repo, given, meant):
    cfg = load(repo / "configs" / "smoke.toml", [f"federation.privacy={given}"])
    assert cfg.federation.privacy == meant


def test_labels_of_old_and_new_runs():
    assert ablation_flags({"federation": {"privacy": True}}) == "-DP"
    assert ablation_flags({"federation": {"privacy": "paper"}}) == "-DP"
    assert ablation_flags({"federation": {"privacy": "gaussian"}}) == "-GDP"
    assert ablation_flags({"federation": {"privacy": False}}) == ""


def test_gaussian_with_a_target_epsilon_loads(repo):
    cfg = load(
        repo / "configs" / "smoke.toml", ["federation.privacy=gaussian", "privacy.epsilon=4"]
    )
    assert cfg.privacy.epsilon == 4.0 and cfg.privacy.noise_multiplier is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["federation.privacy=gaussian", "privacy.epsilon=1", "privacy.noise_multiplier=2"],
            "`privacy.epsilon` (1.0) and `privacy.noise_multiplier` (2.0) are both set",
        ),
        (["federation.privacy=gaussian"], "needs `privacy.epsilon`"),
        (["privacy.epsilon=3"], "set federation.privacy='gaussian' or remove privacy.epsilon"),
        (
            ["federation.privacy=gaussian", "privacy.epsilon=3", "federation.algorithm=fedit"],
            "`federation.algorithm` = 'fedit' uploads none",
        ),
        (
            ["federation.privacy=gaussian", "privacy.epsilon=3", "federation.assignment=static"],
            "`federation.assignment` = 'static' never uploads",
        ),
        (["federation.privacy=gaussian", "privacy.epsilon=3", "federation.rounds=1"], "rounds"),
        (["privacy.delta=1"], "privacy.delta"),
        (["federation.privacy=yes"], "federation.privacy"),
    ],
)
def test_impossible_combinations_are_named(repo, overrides, message):
    with pytest.raises(ConfigError) as raised:
        load(repo / "configs" / "smoke.toml", overrides)
    assert message in str(raised.value)
