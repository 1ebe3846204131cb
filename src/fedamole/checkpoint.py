"""Checkpoints: nested state (tensors, arrays, plain values) as safetensors + a JSON manifest.

Layout: ``checkpoints/last/{tensors.safetensors, state.json}``. A save writes ``last.tmp/``
completely (``state.json`` last, with ``"complete": true``), then swaps it in with two renames; a
crash between them leaves ``last.old/``, which :func:`load_checkpoint` falls back to. A checkpoint
is therefore always either the previous round's or this round's, never a mixture.

Tensors and numpy arrays anywhere in the nested state are stored in the safetensors file under their
path (``/server/bank/layers.0.q_proj/A``); everything else must be JSON-serialisable. ``state.json``
records the sha256 of the tensors file, checked on load: a changed file is an error, never a resume
from corrupt weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or belongs to another configuration."""


def save_checkpoint(folder: Path, state: Mapping[str, Any]) -> Path:
    """Atomically replace ``folder/last`` with ``state``; returns the final path."""
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp, old = folder / "last", folder / "last.tmp", folder / "last.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    manifest = _encode(state, "", tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
    digest = _sha256(tmp / "tensors.safetensors")
    body = {"format": _FORMAT, "state": manifest, "sha256": digest, "complete": True}
    (tmp / "state.json").write_text(json.dumps(body))
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Load the newest complete checkpoint under ``folder``.

    Raises:
        CheckpointError: none exists, or it cannot be read; the message names the file and the fix.
    """
    for name in ("last", "last.old"):
        path = folder / name
        if (path / "state.json").exists():
            return _read(path)
    raise CheckpointError(
        f"no checkpoint in {folder}; the run ended before its first round was saved. "
        "Start it again without --resume (use --overwrite to move the old directory aside)"
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        body = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / 'state.json'} is corrupt ({exc}); cannot resume") from None
    if not body.get("complete") or body.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} is incomplete or of an unknown format {body.get('format')!r}; cannot resume"
        )
    expected = body.get("sha256")  # checkpoints written before checksums have none
    if expected is not None and _sha256(path / "tensors.safetensors") != expected:
        raise CheckpointError(
            f"{path / 'tensors.safetensors'} does not match the checksum in state.json: it changed "
            "after it was written (disk corruption, a copy or an edit), so resuming from it could "
            "give wrong results. Restore the file, or start the run again with --overwrite"
        )
    try:
        tensors = load_file(str(path / "tensors.safetensors"))
    except Exception as exc:  # safetensors raises several types for truncated/corrupt files
        raise CheckpointError(
            f"{path / 'tensors.safetensors'} is corrupt ({exc}); cannot resume"
        ) from None
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
