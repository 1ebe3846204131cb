"""The Gaussian mechanism on the Flower engine (in-process grid): the target epsilon is met,
and a server killed between two releases resumes with every client's accountant exactly where
it was (docs/privacy.md#accounting)."""

from __future__ import annotations

import pytest

flwr = pytest.importorskip("flwr", reason="the Flower engine needs `make install-flower`")

from fedamole.engines.embedded import run_embedded  # noqa: E402
from fedamole.engines.flower import server_app as flower_server  # noqa: E402
from tests.conftest import result_records  # noqa: E402

from .flower_grid import FakeGrid  # noqa: E402
from .test_privacy_run import check_epsilon  # noqa: E402

pytestmark = pytest.mark.flower


@pytest.fixture(scope="module")
def private(smoke):
    return smoke.replace(
        **{
            "federation.privacy": "gaussian",
            "privacy.epsilon": 2.0,
            "privacy.clip": 0.5,
            "federation.rounds": 3,
        }
    )


def _serve(cfg, run_dir, grid, **kwargs):
    return flower_server.serve(grid, flower_server.ServerSettings(cfg, run_dir, **kwargs))


def _rounded(path):
    return [
        (r["round"], r["client"], r["split"], r["metric"], round(r["value"], 6))
        for r in result_records(path)
    ]


def test_flower_meets_the_target_and_resumes_the_accountant(private, tmp_path):
    run_embedded(private, tmp_path / "embedded", progress=False)

    def kill(rnd):
        if rnd == 2:
            raise KeyboardInterrupt("simulated kill")

    state_dir = tmp_path / "r" / "checkpoints" / "clients"
    with pytest.raises(KeyboardInterrupt):
        _serve(private, tmp_path / "r", FakeGrid(3), state_dir=state_dir, on_round=kill)
    _serve(private, tmp_path / "r", FakeGrid(3, base=5000), resume=True, state_dir=state_dir)
    check_epsilon(tmp_path / "r", private)
    assert _rounded(tmp_path / "r") == _rounded(tmp_path / "embedded")


def test_flower_with_both_mechanisms_resumes_like_the_embedded_engine(private, tmp_path):
    """Statistics DP on the clients and update DP on the server, killed between releases."""
    both = private.replace(
        **{
            "privacy.updates": "gaussian",
            "privacy.update_epsilon": 4.0,
            "privacy.update_clip": 0.5,
            "privacy.delta": 0.01,
        }
    )
    run_embedded(both, tmp_path / "embedded", progress=False)

    def kill(rnd):
        if rnd == 2:
            raise KeyboardInterrupt("simulated kill")

    state_dir = tmp_path / "r" / "checkpoints" / "clients"
    with pytest.raises(KeyboardInterrupt):
        _serve(both, tmp_path / "r", FakeGrid(3), state_dir=state_dir, on_round=kill)
    _serve(both, tmp_path / "r", FakeGrid(3, base=5000), resume=True, state_dir=state_dir)
    assert _rounded(tmp_path / "r") == _rounded(tmp_path / "embedded")
    eps = [r for r in result_records(tmp_path / "r") if r["metric"] == "dp/epsilon_updates_max"]
    assert len(eps) == 2 and 0 < eps[-1]["value"] <= 4.0
