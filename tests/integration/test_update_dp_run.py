"""Client-level DP for model updates end to end (docs/privacy.md): FedIT and FedAMoLE end at or
below the target epsilon, FedAMoLE's expert groups get the noise their size implies, and a kill
and resume restores the server's accountant exactly."""

from __future__ import annotations

import pytest

from fedamole.engines.embedded import run_embedded
from fedamole.rundir import SERVER_CLIENT, fold
from tests.conftest import result_records, run_killed

TARGET = 4.0


def _cfg(smoke, algorithm):
    return smoke.replace(
        **{
            "federation.algorithm": algorithm,
            "federation.rounds": 3,
            "privacy.updates": "gaussian",
            "privacy.update_epsilon": TARGET,
            "privacy.update_clip": 0.5,
            "privacy.delta": 0.01,
        }
    )


def _server(path, metric):
    folded = fold(result_records(path), "server", metric)
    return {rnd: clients[SERVER_CLIENT] for rnd, clients in folded.items()}


@pytest.mark.parametrize(("algorithm", "rounds"), [("fedit", [1, 2, 3]), ("fedamole", [1, 2])])
def test_target_epsilon_is_met(smoke, tmp_path, algorithm, rounds):
    cfg = _cfg(smoke, algorithm)
    result = run_embedded(cfg, tmp_path / "r", progress=False)
    eps = _server(tmp_path / "r", "dp/epsilon_updates_max")
    assert sorted(eps) == rounds  # one release per upload round
    assert eps[rounds[0]] < eps[rounds[-1]] <= TARGET
    assert eps[rounds[-1]] > 0.99 * TARGET
    assert 0 < result.epsilon["updates"][-1] <= TARGET
    sizes = _server(tmp_path / "r", "dp/group_size_min")
    std_max, std_min = (
        _server(tmp_path / "r", "dp/noise_std_max"),
        _server(tmp_path / "r", "dp/noise_std_min"),
    )
    z = _server(tmp_path / "r", "dp/noise_multiplier_updates")[rounds[0]]
    for rnd in rounds:  # the largest noise is the smallest group's: z * C / m
        assert std_max[rnd] == pytest.approx(z * 0.5 / sizes[rnd])
        assert std_min[rnd] == pytest.approx(z * 0.5 / cfg.federation.num_clients)
    if algorithm == "fedamole":  # experts held by 2 clients: more noise than the all-client means
        assert min(sizes.values()) == cfg.mole.clients_per_expert < cfg.federation.num_clients
        assert std_max[1] > std_min[1]


def test_kill_and_resume_restore_the_server_accountant(smoke, tmp_path):
    cfg = _cfg(smoke, "fedamole")
    run_embedded(cfg, tmp_path / "full", progress=False)
    run_killed(cfg, tmp_path / "r", kill_round=2)
    run_embedded(cfg, tmp_path / "r", resume=True, progress=False)
    assert result_records(tmp_path / "r") == result_records(tmp_path / "full")
