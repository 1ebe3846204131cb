"""The two-holder subtraction (docs/privacy.md#what-the-server-and-the-other-clients-can-compute):
an expert averaged over 2 holders gives each holder its partner's weights exactly; with update
DP the holder recovers the partner's clipped weights plus noise of standard deviation z C."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedamole.algorithms.fedamole_privacy import private_fold
from fedamole.federated.assignment import Assignment
from fedamole.federated.expert_bank import ExpertBank
from fedamole.federated.update_dp import UpdatePrivacy

Z, CLIP = 2.0, 0.5


@pytest.fixture
def setting(smoke):
    cfg = smoke.replace(
        **{
            "mole.num_experts": 2,
            "mole.min_experts_per_client": 1,
            "mole.max_experts_per_client": 2,
            "mole.top_k": 1,
            "mole.shared_expert": False,
            "privacy.updates": "gaussian",
            "privacy.update_noise_multiplier": Z,
            "privacy.update_clip": CLIP,
            "privacy.delta": 0.01,
        }
    )
    shapes = {"m": (512, 384)}  # enough coordinates to measure a std within ~1 %
    # expert 0 held by clients 0 and 1, expert 1 by clients 1 and 2
    assignment = Assignment({"m": np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)})
    return cfg, shapes, assignment


def _uploads(bank, assignment, scale):
    """Each client's received experts moved by a random update of norm ``scale``."""
    gen = torch.Generator().manual_seed(3)
    out = {}
    for c in range(3):
        state = bank.for_client(assignment, c)["m"]
        delta_a = torch.randn(state.lora_A.shape, generator=gen)
        delta_b = torch.randn(state.lora_B.shape, generator=gen)
        norm = float(torch.cat([delta_a.flatten(), delta_b.flatten()]).norm())
        moved = type(state)(
            expert_ids=state.expert_ids,
            lora_A=state.lora_A + delta_a * scale / norm,
            lora_B=state.lora_B + delta_b * scale / norm,
            token_proj=state.token_proj,
        )
        out[c] = {"m": moved}
    return out


def _bank(cfg, shapes):
    return ExpertBank.initial(shapes, cfg.mole, generator=torch.Generator().manual_seed(0))


def test_without_dp_a_holder_reads_its_partners_expert_exactly(setting):
    cfg, shapes, assignment = setting
    bank = _bank(cfg, shapes)
    uploads = _uploads(bank, assignment, scale=0.3)
    bank.fold(uploads)
    mean_b = bank.modules["m"].lora_B[0]  # what both holders of expert 0 receive next round
    own = uploads[0]["m"].lora_B[0]  # client 0's upload of expert 0 (its row 0)
    partner = uploads[1]["m"].lora_B[0]  # client 1's (expert 0 is its row 0 too)
    torch.testing.assert_close(2 * mean_b - own, partner)


def test_with_update_dp_the_partner_is_hidden_by_noise_of_std_zc(setting):
    cfg, shapes, assignment = setting
    bank = _bank(cfg, shapes)
    received = {c: bank.for_client(assignment, c) for c in range(3)}
    uploads = _uploads(bank, assignment, scale=0.3)  # within the clip: nothing is scaled
    dp = UpdatePrivacy(cfg, releases=1)
    info = private_fold(dp, bank, uploads, received.__getitem__, rnd=1)
    errors = []
    for part in ("lora_A", "lora_B"):
        recovered = 2 * getattr(bank.modules["m"], part)[0] - getattr(uploads[0]["m"], part)[0]
        errors.append((recovered - getattr(uploads[1]["m"], part)[0]).double().flatten())
    error = torch.cat(errors)  # 4 * 512 + 384 * 4 coordinates
    # the mean over 2 holders has noise std z C / 2, so the subtraction leaves 2 * that = z C
    assert float(error.std()) == pytest.approx(Z * CLIP, rel=0.05)
    assert info["dp/noise_std_max"] == pytest.approx(Z * CLIP / 2)
    assert info["dp/noise_std_min"] == pytest.approx(Z * CLIP / 3)  # token projection: 3 clients
