"""Checkpoints: nested state (tensors, arrays, plain values) as safetensors + a JSON manifest.

Layout: ``checkpoints/<name>/{tensors.safetensors, state.json}``; the engine keeps ``last`` (after
every round) and ``best`` (the round ``fedamole report --round best`` names, see
:func:`promote_checkpoint` and docs/run-directory.md#checkpoints). A save writes ``<name>.tmp/``
completely (``state.json`` last, with ``"complete": true``), then swaps it in with two renames; a
crash between them leaves ``<name>.old/``, which :func:`load_checkpoint` falls back to. A
checkpoint is therefore always either the previous one or the new one, never a mixture.

Tensors and numpy arrays anywhere in the nested state are stored in the safetensors file under their
path (``/server/bank/layers.0.q_proj/A``); everything else must be JSON-serialisable. ``state.json``
records the sha256 of the tensors file, checked on load: a changed file is an error, never a resume
from corrupt weights. It also records the state's ``round`` at its top level (read without loading
the tensors by :func:`checkpoint_info`) and, for ``best``, the ``selection`` that chose it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedamole.rundir.layout import (
    BEST,
    CHECKPOINT_STATE,
    CHECKPOINT_TENSORS,
    LAST,
    OLD_SUFFIX,
    SNAPSHOT_GLOB,
    TMP_SUFFIX,
    RunLayout,
    checkpoint_folder,
    snapshot_folder,
    snapshot_round,
)

__all__ = [
    "CheckpointError",
    "checkpoint_config",
    "checkpoint_info",
    "checkpoint_rounds",
    "client_snapshots",
    "client_state",
    "has_checkpoint",
    "load_checkpoint",
    "promote_checkpoint",
    "save_checkpoint",
]

_FORMAT = 1
_TENSORS, _STATE = CHECKPOINT_TENSORS, CHECKPOINT_STATE


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or belongs to another configuration."""


def save_checkpoint(folder: Path, state: Mapping[str, Any], name: str = LAST) -> Path:
    """Atomically replace ``folder/<name>`` (default ``last``) with ``state``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(folder, name)
    tensors: dict[str, torch.Tensor] = {}
    manifest = _encode(state, "", tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / _TENSORS))
    digest = _sha256(tmp / _TENSORS)
    body: dict[str, Any] = {"format": _FORMAT, "state": manifest, "sha256": digest}
    rnd = state.get("round")
    if isinstance(rnd, int) and not isinstance(rnd, bool):
        body["round"] = rnd
    _write_body(tmp, body)
    return _swap_in(folder, name)


def promote_checkpoint(
    folder: Path, selection: Mapping[str, Any], *, source: str = LAST, target: str = BEST
) -> Path:
    """Atomically make ``folder/<target>`` a copy of the checkpoint ``folder/<source>`` (its
    tensors hard-linked where the filesystem allows, else copied), with ``selection`` (why it was
    chosen: round, split, score) recorded in its ``state.json``; returns its path.

    Checkpoint files are never modified in place (a save writes new files and renames folders), so
    a hard link keeps ``target``'s tensors intact when ``source`` is replaced later.

    Raises:
        CheckpointError: ``source`` does not exist or is incomplete.
    """
    src = _existing(folder, source)
    if src is None:
        raise CheckpointError(f"no checkpoint {source!r} in {folder} to copy to {target!r}")
    body = _read_body(src)
    tmp = _fresh_tmp(folder, target)
    try:
        os.link(src / _TENSORS, tmp / _TENSORS)
    except OSError:  # no hard links here (another filesystem, FAT, some network mounts)
        shutil.copyfile(src / _TENSORS, tmp / _TENSORS)
    body.pop("complete", None)
    body["selection"] = dict(selection)
    _write_body(tmp, body)
    return _swap_in(folder, target)


def load_checkpoint(folder: Path, name: str = LAST) -> dict[str, Any]:
    """Load the checkpoint ``folder/<name>`` (default ``last``), or the ``<name>.old`` a crash in
    the middle of a save left.

    Raises:
        CheckpointError: none exists (the message names the checkpoints the folder holds), or it
            cannot be read (the message names the file and the fix).
    """
    path = _existing(folder, name)
    if path is not None:
        return _read(path)
    kept = ", ".join(f"{n} (round {r})" for n, r in checkpoint_rounds(folder).items())
    raise CheckpointError(
        f"no checkpoint {name!r} in {folder}; it holds " + (kept or "no checkpoint")
    )


def checkpoint_info(folder: Path, name: str = LAST) -> dict[str, Any] | None:
    """``{"round": ..., "selection": ...}`` of the checkpoint ``folder/<name>`` (``selection``
    only for a promoted one) without loading its tensors, or ``None`` when it does not exist.

    Raises:
        CheckpointError: its ``state.json`` is unreadable or incomplete.
    """
    path = _existing(folder, name)
    if path is None:
        return None
    body = _read_body(path)
    rnd = body.get("round")
    if rnd is None:  # written before the round was recorded at the top level
        rnd = body.get("state", {}).get("__map__", {}).get("s:round")
    info: dict[str, Any] = {"round": rnd}
    if "selection" in body:
        info["selection"] = body["selection"]
    return info


def checkpoint_config(folder: Path) -> dict[str, Any] | None:
    """The config (a dict) of the checkpoint a resume would start from (``last``, else
    ``best``), read from its ``state.json`` without the tensors; ``None`` when neither can be
    read."""
    for name in (LAST, BEST):
        try:
            path = _existing(folder, name)
            if path is None:
                continue
            text = _read_body(path)["state"]["__map__"]["s:config"]
            return json.loads(text)
        except (CheckpointError, KeyError, TypeError, json.JSONDecodeError):
            continue
    return None


def checkpoint_rounds(folder: Path) -> dict[str, int | None]:
    """``{name: round}`` of the checkpoints the engine keeps (``last``, ``best``) that exist and
    can be read."""
    out: dict[str, int | None] = {}
    for name in (LAST, BEST):
        try:
            info = checkpoint_info(folder, name)
        except CheckpointError:
            continue
        if info is not None:
            out[name] = info["round"]
    return out


def has_checkpoint(folder: Path, name: str = LAST) -> bool:
    """Whether ``folder/<name>`` (or the ``<name>.old`` a crash left) holds a checkpoint that
    :func:`load_checkpoint` would try (its ``state.json`` exists)."""
    return _existing(folder, name) is not None


def _existing(folder: Path, name: str) -> Path | None:
    """``folder/<name>``, or ``<name>.old`` when a crash left only that; ``None`` if neither."""
    return checkpoint_folder(folder, name)


def _fresh_tmp(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}{TMP_SUFFIX}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _write_body(tmp: Path, body: Mapping[str, Any]) -> None:
    """``state.json``, written last: its ``"complete": true`` marks a whole checkpoint."""
    (tmp / _STATE).write_text(json.dumps({**body, "complete": True}))


def _swap_in(folder: Path, name: str) -> Path:
    """Replace ``folder/<name>`` by the complete ``<name>.tmp`` with two renames (a crash between
    them leaves ``<name>.old``, which loading falls back to)."""
    final, tmp, old = folder / name, folder / f"{name}{TMP_SUFFIX}", folder / f"{name}{OLD_SUFFIX}"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _read_body(path: Path) -> dict[str, Any]:
    try:
        body = json.loads((path / _STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / _STATE} is corrupt ({exc}); cannot resume") from None
    if not body.get("complete") or body.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} is incomplete or of an unknown format {body.get('format')!r}; cannot resume"
        )
    return body


def _read(path: Path) -> dict[str, Any]:
    body = _read_body(path)
    if not (path / _TENSORS).is_file():
        raise CheckpointError(f"{path / _TENSORS} is missing; cannot resume from {path}")
    expected = body.get("sha256")  # checkpoints written before checksums have none
    if expected is not None and _sha256(path / _TENSORS) != expected:
        raise CheckpointError(
            f"{path / _TENSORS} does not match the checksum in state.json: it changed "
            "after it was written (disk corruption, a copy or an edit), so resuming from it could "
            "give wrong results. Restore the file, or start the run again with --overwrite"
        )
    try:
        tensors = load_file(str(path / _TENSORS))
    except Exception as exc:  # safetensors raises several types for truncated/corrupt files
        raise CheckpointError(f"{path / _TENSORS} is corrupt ({exc}); cannot resume") from None
    try:
        return _decode(body["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(f"{path}: tensor {exc} listed in state.json is missing") from None


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.array(value, order="C"))  # a writable copy
        return {"__ndarray__": path}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"checkpoint keys must be str or int, got {type(key)} at {path!r}")
            out[f"{type(key).__name__[0]}:{key}"] = _encode(item, f"{path}/{key}", tensors)
        return {"__map__": out}
    if isinstance(value, list | tuple):
        return {"__list__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {path!r}")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__map__" in value:
            out = {}
            for key, item in value["__map__"].items():
                kind, _, name = key.partition(":")
                out[int(name) if kind == "i" else name] = _decode(item, tensors)
            return out
        if "__list__" in value:
            return [_decode(v, tensors) for v in value["__list__"]]
    return value


# ------------------------------------------------------------------------------------------------
# Flower clients' own state snapshots (docs/run-directory.md#checkpoints): one checkpoint folder
# per client and round, ``<state dir>/client_NNN/round_RRR``, numbered as the server's checkpoints.


def client_snapshots(state_dir: Path | None, client: int) -> dict[int, Path]:
    """``{round: folder}`` of client ``client``'s snapshot folders (complete or not), by round."""
    folder = None if state_dir is None else snapshot_folder(state_dir, client)
    if folder is None or not folder.is_dir():
        return {}
    found = {}
    for path in folder.glob(SNAPSHOT_GLOB):
        rnd = snapshot_round(path)
        if rnd is not None and path.is_dir():
            found[rnd] = path
    return dict(sorted(found.items()))


def client_state(run_dir: Path, state: Mapping[str, Any], client: int) -> dict[str, Any]:
    """Client ``client``'s private state after the round of ``state``, a checkpoint of the run in
    ``run_dir`` (:func:`load_checkpoint`), on either engine: the embedded engine checkpoints every
    client's state (``state["clients"]``); the Flower engine's checkpoints hold the server state
    only (``clients`` is empty) and each client snapshots its own, read here.

    Raises:
        ValueError: a Flower run without the client's snapshot of that round (see
            :func:`_snapshot_state`).
    """
    clients = state["clients"]
    if client in clients:
        return clients[client]
    return _snapshot_state(run_dir, client, int(state["round"]))


def _snapshot_state(run_dir: Path, client: int, rnd: int) -> dict[str, Any]:
    """Client ``client``'s private state after round ``rnd`` of a Flower run, whose checkpoints
    hold no client state: the client's own snapshot (``checkpoints/clients/client_NNN/round_RRR``,
    written by :mod:`fedamole.engines.flower.client_app` after every round the client completes,
    numbered as the checkpoints are) of the newest round up to ``rnd``, the state the client
    itself would resume from (a client that failed in round ``rnd`` kept that of an earlier one).

    Raises:
        ValueError: the run directory holds no snapshot of the client (a deployment writes them
            to each SuperNode's ``state-dir``), or none up to ``rnd`` (pruned); the message names
            the rounds kept and the fix.
    """
    state_dir = RunLayout(run_dir).client_checkpoints
    folder = snapshot_folder(state_dir, client)
    kept = {
        r: path
        for r, path in client_snapshots(state_dir, client).items()
        if checkpoint_info(path) is not None  # complete
    }
    if not kept:
        raise ValueError(
            f"client {client}'s state is not in the checkpoint of round {rnd}: on the Flower "
            f"engine each client keeps its own, and {folder} holds no snapshot of it. A deployment "
            f"writes them to each SuperNode's `state-dir`: copy that node's {folder.name}/ "
            f"folder to {folder.parent}/ and export again"
        )
    earlier = [r for r in kept if r <= rnd]
    if not earlier:
        raise ValueError(
            f"the snapshot of client {client}'s state after round {rnd} is no longer kept: a "
            "Flower client keeps those of its last two rounds and of the run's best round "
            f"(runs written before it kept the best one lack it), and {folder} holds rounds "
            f"{sorted(kept)}. Export --round last instead, or run the experiment again to "
            "keep the snapshot of its best round"
        )
    return dict(load_checkpoint(kept[max(earlier)])["state"])
