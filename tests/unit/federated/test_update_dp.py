"""Client-level DP for model updates (fedamole.federated.update_dp): joint clipping by hand, the
noise's calibrated standard deviation per group size, accounting and its state."""

from __future__ import annotations

import pytest
import torch

from fedamole.federated.accounting import epsilon_for
from fedamole.federated.update_dp import UpdatePrivacy


@pytest.fixture
def dp(smoke):
    cfg = smoke.replace(
        **{
            "federation.algorithm": "fedit",
            "privacy.updates": "gaussian",
            "privacy.update_noise_multiplier": 1.5,
            "privacy.update_clip": 1.0,
            "privacy.delta": 0.01,
        }
    )
    return UpdatePrivacy(cfg, releases=cfg.federation.rounds)


def test_the_whole_update_is_clipped_jointly(dp):
    """By hand: update (3, 0) + (0, 4) has norm 5; clipped to 1 it is (0.6, 0) + (0, 0.8)."""
    ref = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([2.0])}
    up = {"a": torch.tensor([4.0, 1.0]), "b": torch.tensor([6.0]), "ids": torch.tensor([7])}
    out, norm = dp.clip(up, ref)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(out["a"], torch.tensor([1.6, 1.0]))
    torch.testing.assert_close(out["b"], torch.tensor([2.8]))
    assert out["ids"] is up["ids"]  # not a weight: passes unchanged
    small = {"a": torch.tensor([1.3, 1.0]), "b": torch.tensor([2.4])}  # norm 0.5: kept
    kept, _ = dp.clip(small, ref)
    torch.testing.assert_close(kept["a"], small["a"])


@pytest.mark.parametrize("group", [2, 3, 10])
def test_noise_has_std_z_c_over_the_group_size(dp, group):
    mean = torch.zeros(40_000, dtype=torch.float64)
    noisy = dp.noise(mean, group, torch.Generator().manual_seed(0))
    assert float(noisy.std()) == pytest.approx(1.5 * 1.0 / group, rel=0.03)
    assert dp.std(2) / dp.std(10) == pytest.approx(5.0)  # groups of 2: 5x the noise of 10


def test_each_round_is_one_release_per_client_and_the_state_restores(dp, smoke):
    dp.step([0, 1, 2], [3], [0.5, 2.0, 1.0])
    dp.step([0, 2], [2], [0.1, 0.1])
    assert dp.epsilon(0) == pytest.approx(epsilon_for(1.5, steps=2, delta=0.01))
    assert dp.epsilon(1) == pytest.approx(epsilon_for(1.5, steps=1, delta=0.01))
    assert dp.round_info["dp/noise_std_max"] == pytest.approx(1.5 / 2)
    assert dp.round_info["dp/clipped_updates"] == 0.0
    again = UpdatePrivacy(dp_cfg := smoke.replace(**_FEDIT_DP), releases=2)
    assert dp_cfg.privacy.update_noise_multiplier == 1.5
    again.load_state_dict(dp.state_dict())
    assert again.releases == {0: 2, 1: 1, 2: 2}


_FEDIT_DP = {
    "federation.algorithm": "fedit",
    "privacy.updates": "gaussian",
    "privacy.update_noise_multiplier": 1.5,
    "privacy.delta": 0.01,
}
