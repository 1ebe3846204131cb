"""`fedamole plot routing` of a Flower run, whose checkpoints hold no client state: the routing
points come from the clients' own snapshots and equal the embedded engine's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower engine needs `make install-flower`")

from fedamole.analysis.routing import routing_points
from fedamole.engines.embedded import run_embedded
from fedamole.engines.flower import server_app as flower_server
from fedamole.rundir import load_checkpoint

from .flower_grid import FakeGrid

pytestmark = pytest.mark.flower


def test_routing_of_a_flower_run_reads_the_clients_snapshots(smoke, tmp_path):
    cfg = smoke.replace(**{"train.steps": 2, "data.test_cap": 2, "eval.max_new_tokens": 2})
    embedded, flower = tmp_path / "embedded", tmp_path / "flower"
    run_embedded(cfg, embedded, progress=False)
    settings = flower_server.ServerSettings(
        cfg, flower, state_dir=flower / "checkpoints" / "clients"
    )
    flower_server.serve(FakeGrid(3), settings)
    assert not load_checkpoint(flower / "checkpoints")["clients"]

    got, want = (routing_points(run, max_batches=2) for run in (flower, embedded))
    assert (got.round, got.modules, got.held) == (want.round, want.modules, want.held)
    assert got.clients.tolist() == want.clients.tolist() == sorted(got.clients.tolist())
    assert set(got.clients.tolist()) == {0, 1, 2}
    np.testing.assert_allclose(got.points, want.points, rtol=0, atol=1e-6)
