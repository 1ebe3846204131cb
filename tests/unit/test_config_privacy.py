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


_UPDATES = ["privacy.updates=gaussian", "privacy.update_epsilon=1", "privacy.delta=0.01"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.updates=gaussian", "privacy.delta=0.01"], "needs `privacy.update_epsilon`"),
        (
            [*_UPDATES, "privacy.update_noise_multiplier=1"],
            "are both set",
        ),
        (["privacy.update_epsilon=1"], "set privacy.updates='gaussian'"),
        (
            [*_UPDATES, "federation.algorithm=local"],
            "is not implemented for `federation.algorithm` = 'local'",
        ),
        (
            [*_UPDATES, "federation.weighting=examples"],
            "needs unweighted means",
        ),
        (
            ["privacy.updates=gaussian", "privacy.update_epsilon=1", "privacy.delta=0.5"],
            "`privacy.delta` (0.5) must be < 1 / `federation.num_clients` (1/3)",
        ),
    ],
)
def test_impossible_update_dp_combinations_are_named(repo, overrides, message):
    with pytest.raises(ConfigError) as raised:
        load(repo / "configs" / "smoke.toml", overrides)
    assert message in str(raised.value)


def test_update_dp_algorithms_average_through_the_hooked_code():
    """Each listed algorithm averages through the code that applies privacy.updates: the
    shared LoRA merge (not overridden) or FedAMoLE's bank; the others must be refused."""
    from fedamole.algorithms import get_algorithm
    from fedamole.algorithms.fedamole import FedAMoLE
    from fedamole.algorithms.lora_strategy import LoRAStrategy
    from fedamole.config.checks import UPDATE_DP_ALGORITHMS

    for name in UPDATE_DP_ALGORITHMS:
        cls = get_algorithm(name)
        if cls is FedAMoLE:
            continue
        assert issubclass(cls, LoRAStrategy), name
        assert cls.merge is LoRAStrategy.merge and cls.aggregate is LoRAStrategy.aggregate, name
        assert cls.broadcast_init and cls.shared_parts, name  # it uploads something
    assert get_algorithm("flexlora").merge is not LoRAStrategy.merge  # refused: own averaging
