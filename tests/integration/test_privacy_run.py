"""The Gaussian mechanism on FedAMoLE's statistics end to end (docs/privacy.md): a run with a
target epsilon ends at or below it, the accountant's state survives a kill and a resume exactly,
and the run summary reports it."""

from __future__ import annotations

import pytest

from fedamole.engines.embedded import run_embedded
from fedamole.engines.summary import format_summary
from fedamole.federated.accounting import epsilon_for, noise_for_epsilon
from fedamole.rundir import fold
from tests.conftest import result_records, run_killed

TARGET = 2.0


@pytest.fixture(scope="module")
def private(smoke):
    """3 rounds: the statistics are released in rounds 1 and 2, so a kill in round 2 falls
    between two releases."""
    return smoke.replace(
        **{
            "federation.privacy": "gaussian",
            "privacy.epsilon": TARGET,
            "privacy.clip": 0.5,
            "federation.rounds": 3,
        }
    )


@pytest.fixture(scope="module")
def private_run(private, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "private"
    result = run_embedded(private, path, progress=False)
    return path, result


def check_epsilon(path, cfg) -> None:
    """Every client's epsilon, every round: 0 before any release, growing with each, the
    accountant's value for the releases so far, at or below the target at the end."""
    records = result_records(path)
    eps = fold(records, "privacy", "epsilon_stats")
    z = noise_for_epsilon(TARGET, steps=2, delta=cfg.privacy.delta)
    clients = range(cfg.federation.num_clients)
    for rnd, releases in ((0, 0), (1, 1), (2, 2), (3, 2)):
        for client in clients:
            expected = epsilon_for(z, steps=releases, delta=cfg.privacy.delta)
            assert eps[rnd][client] == pytest.approx(expected, rel=1e-9), (rnd, client)
    assert all(0 < eps[3][c] <= TARGET for c in clients)
    assert max(eps[3].values()) > 0.99 * TARGET  # the noise is not needlessly large
    std = fold(records, "privacy", "noise_std_stats")
    assert set(std) == {1, 2} and all(v > 0 for v in std[1].values())


def test_target_epsilon_is_met(private_run, private):
    path, result = private_run
    check_epsilon(path, private)
    assert set(result.epsilon["stats"]) == {0, 1, 2}
    assert "privacy (stats): epsilon at the end, per client: " in format_summary(result)


def test_kill_and_resume_restore_the_accountant_exactly(private_run, private, tmp_path):
    path, _ = private_run
    run_killed(private, tmp_path / "r", kill_round=2)
    run_embedded(private, tmp_path / "r", resume=True, progress=False)
    assert result_records(tmp_path / "r") == result_records(path)
    check_epsilon(tmp_path / "r", private)


def test_the_statistics_differ_from_the_clean_ones(private, tmp_path):
    """The noise reaches the server: RSEA sees other affinities than without the mechanism."""
    clean = private.replace(**{"federation.privacy": "none", "privacy.epsilon": None})
    run_embedded(clean, tmp_path / "clean", progress=False)
    run_embedded(private, tmp_path / "noisy", progress=False)

    def spread(path):
        return fold(result_records(path), "server", "rsea/affinity_spread")

    assert spread(tmp_path / "clean") != spread(tmp_path / "noisy")
