"""Checkpoints: round trip of nested state, atomic replacement, clear errors on corruption."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fedamole.rundir import (
    CheckpointError,
    RunDir,
    client_snapshot,
    client_state,
    load_checkpoint,
    save_checkpoint,
)


def _state(v: float):
    return {
        "round": 3,
        "server": {
            "bank": {"m.q_proj": {"A": torch.full((2, 3), v)}},
            "assign": np.eye(3, dtype=bool),
        },
        "clients": {0: {"stream": {"epoch": 1, "position": 4}}, 1: {}},
        "list": [1, "a", None, torch.arange(3)],
    }


def test_round_trip(tmp_path):
    save_checkpoint(tmp_path, _state(1.5))
    got = load_checkpoint(tmp_path)
    assert got["round"] == 3
    assert torch.equal(got["server"]["bank"]["m.q_proj"]["A"], torch.full((2, 3), 1.5))
    assert got["server"]["assign"].dtype == bool and got["server"]["assign"].sum() == 3
    assert got["clients"][0]["stream"] == {"epoch": 1, "position": 4}
    assert got["clients"][1] == {}
    assert got["list"][:3] == [1, "a", None] and torch.equal(got["list"][3], torch.arange(3))


def test_save_replaces_and_falls_back_to_old(tmp_path):
    save_checkpoint(tmp_path, _state(1.0))
    save_checkpoint(tmp_path, _state(2.0))
    assert load_checkpoint(tmp_path)["server"]["bank"]["m.q_proj"]["A"][0, 0] == 2.0
    # a crash between the two renames leaves last.old only
    (tmp_path / "last").rename(tmp_path / "last.old")
    assert load_checkpoint(tmp_path)["server"]["bank"]["m.q_proj"]["A"][0, 0] == 2.0


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, _state(1.0))
    (tmp_path / "last" / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="tensors.safetensors does not match the checksum"):
        load_checkpoint(tmp_path)
    state = json.loads((tmp_path / "last" / "state.json").read_text())
    del state["sha256"]  # as written before checksums: safetensors' own check still applies
    (tmp_path / "last" / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="tensors.safetensors is corrupt"):
        load_checkpoint(tmp_path)
    (tmp_path / "last" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json is corrupt"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint 'last'.*holds no checkpoint"):
        load_checkpoint(tmp_path)


def test_unsupported_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        save_checkpoint(tmp_path, {"x": object()})


def test_a_changed_tensor_file_fails_its_checksum(tmp_path):
    import torch

    save_checkpoint(tmp_path, {"w": torch.arange(64, dtype=torch.float32), "round": 1})
    file = tmp_path / "last" / "tensors.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit inside the tensor bytes: safetensors itself loads it fine
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_checkpoint(tmp_path)


def test_client_state_reads_the_checkpoint_or_the_clients_own_snapshots(tmp_path):
    """Both engines' layouts: the embedded engine's checkpoint holds every client's state; a
    Flower run's holds none, and each client's snapshots (one per round) are read instead."""
    run = RunDir(tmp_path)
    own = {0: {"w": torch.zeros(2)}, 1: {"w": torch.ones(2)}}
    save_checkpoint(run.checkpoints, {"round": 2, "clients": own, "server": {}})
    embedded = load_checkpoint(run.checkpoints)
    assert torch.equal(client_state(tmp_path, embedded, 1)["w"], torch.ones(2))

    flower = {"round": 2, "clients": {}, "server": {}}
    for rnd in (0, 1, 2):
        state = {"w": torch.full((2,), float(rnd))}
        save_checkpoint(client_snapshot(run.client_checkpoints, 0, rnd), {"state": state})
    assert torch.equal(client_state(tmp_path, flower, 0)["w"], torch.full((2,), 2.0))
    failed = {**flower, "round": 3}  # no snapshot of round 3: the newest earlier one
    assert torch.equal(client_state(tmp_path, failed, 0)["w"], torch.full((2,), 2.0))
    for rnd in (0, 1):
        shutil.rmtree(client_snapshot(run.client_checkpoints, 0, rnd))
    with pytest.raises(ValueError, match="after round 1 is no longer kept"):
        client_state(tmp_path, {**flower, "round": 1}, 0)
    with pytest.raises(ValueError, match="holds no snapshot of it"):
        client_state(tmp_path, flower, 1)
