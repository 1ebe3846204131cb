"""``flower.secagg`` refusals: federations too small to hide a client, shares and ranges Flower's
SecAgg+ refuses or that overflow, algorithms with no mean over every client (or with means over
groups too small to hide anything), and the embedded engine."""

from __future__ import annotations

import pytest

from fedamole.config import ConfigError
from fedamole.engines.embedded import run_embedded
from fedamole.preflight import secagg_errors

SECURE = {"flower.secagg": "secaggplus"}


def _errors(smoke, **overrides) -> str:
    with pytest.raises(ConfigError) as refused:
        smoke.replace(**SECURE, **overrides)
    return "\n".join(refused.value.errors)


def test_defaults_fit_the_smoke_federation(smoke):
    cfg = smoke.replace(**SECURE)
    s = cfg.flower.secaggplus
    assert (s.num_shares, s.reconstruction_threshold) == (None, None)  # every client, a majority
    assert 3 * s.quantization_range < s.modulus_range
    assert smoke.flower.secagg == "none"


def test_two_clients_are_refused_with_the_reason(smoke):
    message = _errors(
        smoke,
        **{
            "federation.num_clients": 2,
            "federation.algorithm": "fedit",
            "mole.num_experts": 2,
        },
    )
    assert "`federation.num_clients` >= 3 (got 2)" in message
    assert "subtract its own update" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"flower.secaggplus.reconstruction_threshold": 3}, "must be < num_shares (3)"),
        ({"flower.secaggplus.num_shares": 4}, "`flower.secaggplus.num_shares` (4) must be <="),
        ({"flower.secaggplus.quantization_range": 2**31 - 1}, "wraps around"),
        ({"flower.secaggplus.modulus_range": 3 * 2**30}, "must be a power of 2"),
        ({"flower.secaggplus.num_shares": 2}, "greater than or equal to 3"),
    ],
)
def test_shares_and_ranges_flower_refuses_or_that_overflow(smoke, overrides, expected):
    assert expected in _errors(smoke, **overrides)


def test_an_even_share_count_below_the_clients_is_refused(smoke):
    cfg = {
        "federation.num_clients": 6,
        "mole.num_experts": 6,
        "flower.secaggplus.num_shares": 4,
    }
    assert "must be odd" in _errors(smoke, **cfg)
    smoke.replace(**SECURE, **{**cfg, "flower.secaggplus.num_shares": 5})  # accepted


def test_quantization_within_the_modulus_passes_and_beyond_it_names_the_limit(smoke):
    smoke.replace(**SECURE, **{"flower.secaggplus.quantization_range": 2**30})  # 3 * 2**30 < 2**32
    message = _errors(smoke, **{"flower.secaggplus.quantization_range": 2**31 - 1})
    assert f"<= {(2**32 - 1) // 3}" in message


@pytest.mark.parametrize("name", ["fedit", "ffa_lora", "fedsa_lora", "feddpa", "fedprompt"])
def test_algorithms_with_a_mean_over_all_clients_run(smoke, name):
    assert secagg_errors(smoke.replace(**SECURE, **{"federation.algorithm": name})) == []


@pytest.mark.parametrize(
    "name", ["fedit_clustered", "local", "flexlora", "hetlora", "fedalt", "fdlora", "fedptuning"]
)
def test_algorithms_without_one_are_refused(smoke, name):
    (message,) = secagg_errors(smoke.replace(**SECURE, **{"federation.algorithm": name}))
    assert f"cannot protect {name}" in message
    assert "subtract its own update" in message
    assert "'fedit'" in message and '`flower.secagg = "none"`' in message


def test_fedamole_is_refused_unless_its_experts_may_travel_in_the_clear(smoke):
    (message,) = secagg_errors(smoke.replace(**SECURE))
    assert "each domain expert, averaged among its `mole.clients_per_expert` holders (2)" in message
    assert "subtract its own update" in message
    assert "flower.secaggplus.experts_in_clear = true" in message
    allowed = smoke.replace(**SECURE, **{"flower.secaggplus.experts_in_clear": True})
    assert secagg_errors(allowed) == []


def test_the_embedded_engine_refuses_secagg(smoke, tmp_path):
    cfg = smoke.replace(**SECURE, **{"federation.algorithm": "fedit"})
    with pytest.raises(ConfigError, match="needs the Flower engine.*--engine flower"):
        run_embedded(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_update_dp_and_secagg_are_refused_together(smoke):
    """Update DP clips each client's update on the server; SecAgg+ shows it only the mean."""
    dp = {
        "federation.algorithm": "fedit",
        "privacy.updates": "gaussian",
        "privacy.update_noise_multiplier": 1.0,
        "privacy.delta": 1e-5,
    }
    message = _errors(smoke, **dp)
    assert "`privacy.updates` = 'gaussian' with `flower.secagg` = 'secaggplus'" in message
    assert "privacy.updates='none' or flower.secagg='none'" in message
    assert smoke.replace(**dp).privacy.updates == "gaussian"  # either alone is accepted
