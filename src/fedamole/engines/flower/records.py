"""Our typed messages and client state as Flower records, losslessly
(docs/algorithm.md#communication).

A :class:`~fedamole.federated.messages.ServerMessage` or ``ClientMessage`` becomes one
``RecordDict`` of four records:

================== =============== ==========================================================
key                 record          holds
================== =============== ==========================================================
``fedamole.meta``   ConfigRecord    ``kind`` ("server"/"client"), ``round``, ``client``
``fedamole.tensors`` ArrayRecord    ``msg.tensors``, same keys, dtype, shape and bits
``fedamole.config`` ConfigRecord    ``msg.config`` (int, float, str, bool kept apart)
``fedamole.metrics`` MetricRecord   ``msg.metrics``
================== =============== ==========================================================

Tensors whose dtype numpy knows travel as Flower's standard ``numpy.ndarray`` arrays; the others
(``bfloat16``, the float8 types) as raw little-endian bytes with ``stype = "torch.raw"`` and the
torch dtype name, since a numpy round trip would change their type.

Client-private state (a nested dict of tensors and plain values, see
:class:`~fedamole.algorithms.base.ClientContext`) is stored in a ClientApp's ``context.state`` as an
ArrayRecord of its tensors plus a ConfigRecord holding a JSON manifest of the rest
(:func:`state_to_records` / :func:`state_from_records`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = [
    "STATE_KEY",
    "STATE_TENSORS_KEY",
    "array_to_tensor",
    "message_from_record",
    "message_to_record",
    "state_from_records",
    "state_to_records",
    "tensor_to_array",
]

META, TENSORS, CONFIG, METRICS = (
    "fedamole.meta",
    "fedamole.tensors",
    "fedamole.config",
    "fedamole.metrics",
)
STATE_KEY, STATE_TENSORS_KEY = "fedamole.state", "fedamole.state.tensors"  # one key namespace
_RAW = "torch.raw"
_KINDS: dict[str, type[ServerMessage] | type[ClientMessage]] = {
    "server": ServerMessage,
    "client": ClientMessage,
}


def tensor_to_array(tensor: torch.Tensor) -> Array:
    """A Flower ``Array`` holding ``tensor`` (detached, on CPU) bit for bit."""
    t = tensor.detach().cpu().contiguous()
    try:
        return Array(t.numpy())
    except TypeError:  # a dtype numpy lacks (bfloat16, float8): ship the raw bytes
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return Array(dtype=str(t.dtype), shape=tuple(t.shape), stype=_RAW, data=raw)


def array_to_tensor(array: Array) -> torch.Tensor:
    """Inverse of :func:`tensor_to_array` (a fresh, writable CPU tensor)."""
    if array.stype == _RAW:
        dtype = getattr(torch, array.dtype.removeprefix("torch."))
        flat = torch.frombuffer(bytearray(array.data), dtype=torch.uint8)
        return flat.view(dtype).reshape(array.shape).clone()
    return torch.from_numpy(np.array(array.numpy(), copy=True))


def message_to_record(msg: ServerMessage | ClientMessage) -> RecordDict:
    """The ``RecordDict`` of a message (see the module docstring)."""
    kind = "server" if isinstance(msg, ServerMessage) else "client"
    return RecordDict(
        {
            META: ConfigRecord({"kind": kind, "round": msg.round, "client": msg.client}),
            TENSORS: ArrayRecord({k: tensor_to_array(t) for k, t in msg.tensors.items()}),
            CONFIG: ConfigRecord(dict(msg.config)),
            METRICS: MetricRecord(dict(msg.metrics)),
        }
    )


def message_from_record(content: RecordDict) -> ServerMessage | ClientMessage:
    """Inverse of :func:`message_to_record`.

    Raises:
        ValueError: ``content`` is not a fedamole message.
    """
    if META not in content.config_records:
        raise ValueError(f"not a fedamole message: no `{META}` record (got {sorted(content)})")
    meta = content.config_records[META]
    cls = _KINDS[str(meta["kind"])]
    return cls(
        round=int(meta["round"]),
        client=int(meta["client"]),
        tensors={k: array_to_tensor(a) for k, a in content.array_records[TENSORS].items()},
        config=dict(content.config_records[CONFIG]),
        metrics=dict(content.metric_records[METRICS]),
    )


def state_to_records(state: Mapping[str, Any]) -> tuple[ArrayRecord, ConfigRecord]:
    """A client's private state as (tensors, manifest) records for ``context.state``.

    Raises:
        TypeError: a value that is neither a tensor, an array, a mapping, a sequence nor a JSON
            scalar.
    """
    arrays: dict[str, Array] = {}
    manifest = _encode(state, "", arrays)
    return ArrayRecord(arrays), ConfigRecord({"manifest": json.dumps(manifest)})


def state_from_records(arrays: ArrayRecord, config: ConfigRecord) -> dict[str, Any]:
    """Inverse of :func:`state_to_records`."""
    return _decode(json.loads(str(config["manifest"])), arrays)


def _encode(value: Any, path: str, arrays: dict[str, Array]) -> Any:
    if isinstance(value, torch.Tensor):
        arrays[path] = tensor_to_array(value)
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        arrays[path] = Array(np.ascontiguousarray(value))
        return {"__ndarray__": path}
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"state keys must be str or int, got {type(key)} at {path!r}")
            items.append([key, _encode(item, f"{path}/{key}", arrays)])
        return {"__map__": items}
    if isinstance(value, list | tuple):
        return {"__list__": [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} at {path!r} in client state")


def _decode(value: Any, arrays: ArrayRecord) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return array_to_tensor(arrays[value["__tensor__"]])
        if "__ndarray__" in value:
            return np.array(arrays[value["__ndarray__"]].numpy(), copy=True)
        if "__map__" in value:
            return {key: _decode(item, arrays) for key, item in value["__map__"]}
        if "__list__" in value:
            return [_decode(v, arrays) for v in value["__list__"]]
    return value
