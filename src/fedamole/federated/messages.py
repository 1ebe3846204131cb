"""Typed messages between server and clients, with exact byte counts
(docs/algorithm.md#communication).

A message is a flat ``{key: Tensor}`` map plus small scalar ``config`` and ``metrics`` maps; that
shape converts losslessly to any transport (Flower's
``ArrayRecord``/``ConfigRecord``/``MetricRecord``). Tensor keys are ``"<kind>:<module>[:<part>]"``;
the kind before the first ``:`` is what :meth:`nbytes` groups by and what ``comm.jsonl`` reports:

========== ===============================================================
kind        content
========== ===============================================================
experts     stacked LoRA A (n, r, d_in) and B (n, d_out, r) of domain experts
shared      the shared expert's A (r, d_in) and B (d_out, r)
token_proj  the token projection (r, d_in)
gate        per-expert gate vectors (n, d_in) (linear-router ablation only)
embeddings  mean token (r,) and mean expert (n, r) embeddings for RSEA
ids         global expert ids (n,) int64 (metadata, outside the paper's byte formula)
========== ===============================================================

Only tensor bytes are counted (``numel * element_size``); scalars in ``config``/``metrics`` are a
few bytes and transport-specific.

Metric keys are ``"<split>/<metric>"`` (``train/loss``, ``test/score``); a per-step metric adds
``"@<step>"`` (``train/step_loss@3``: the loss of optimizer step 3 of the round, steps numbered
from 1; :func:`step_key`, :func:`split_step_key`). The engines write each as one
``metrics.jsonl`` record with a ``step`` field (docs/run-directory.md#metricsjsonl).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedamole.mole import ModuleState, ModuleStats

__all__ = [
    "PREDICTIONS",
    "STEP_SEPARATOR",
    "ClientMessage",
    "ServerMessage",
    "pack_modules",
    "pack_predictions",
    "pack_stats",
    "split_step_key",
    "step_key",
    "unpack_modules",
    "unpack_predictions",
    "unpack_stats",
]

Scalar = int | float | str | bool

STEP_SEPARATOR = "@"
"""Between a per-step metric's name and its step in a metric key (``train/step_loss@3``)."""


PREDICTIONS = "predictions"
"""The reply ``config`` key of a round's per-example test results (:func:`pack_predictions`)."""


def pack_predictions(predictions: Mapping[str, list[dict[str, Any]]]) -> str:
    """A round's per-example results, ``{"test" | "received": [record, ...]}``, as one string (a
    config value crosses every transport; docs/run-directory.md#predictionsjsonl)."""
    return json.dumps(predictions, separators=(",", ":"))


def unpack_predictions(config: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The per-example results a reply carries (``{}`` when it carries none)."""
    packed = config.get(PREDICTIONS)
    return json.loads(packed) if isinstance(packed, str) else {}


def step_key(name: str, step: int) -> str:
    """The metric key of ``name`` at optimizer step ``step`` (1-based): ``"<name>@<step>"``."""
    return f"{name}{STEP_SEPARATOR}{step}"


def split_step_key(key: str) -> tuple[str, int | None]:
    """Inverse of :func:`step_key`: ``("train/step_loss", 3)``, or ``(key, None)`` for a key
    without a step. Only per-step metrics carry one: a metric whose name (after the last ``/``)
    contains ``step_`` (``step_loss``, FedDPA's ``local_step_lr``); ``test/acc@5`` stays a
    metric of its own."""
    name, sep, step = key.rpartition(STEP_SEPARATOR)
    per_step = "step_" in name.rpartition("/")[2]
    if not sep or not per_step or not (step.isascii() and step.isdigit()):
        return key, None
    return name, int(step)


@dataclass(frozen=True)
class _Message:
    round: int
    client: int
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    config: Mapping[str, Scalar] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def nbytes(self) -> dict[str, int]:
        """Tensor bytes by payload kind."""
        out: dict[str, int] = defaultdict(int)
        for key, tensor in self.tensors.items():
            out[key.split(":", 1)[0]] += tensor.numel() * tensor.element_size()
        return dict(out)

    def total_bytes(self) -> int:
        return sum(self.nbytes().values())


@dataclass(frozen=True)
class ServerMessage(_Message):
    """Server to one client: weights to load (maybe none) and what to do this round."""


@dataclass(frozen=True)
class ClientMessage(_Message):
    """One client to the server: its update, statistics and metrics."""


def pack_modules(states: Mapping[str, ModuleState]) -> dict[str, torch.Tensor]:
    """Flatten per-module states into message tensors (see the module docstring for keys)."""
    out: dict[str, torch.Tensor] = {}
    for name, st in states.items():
        out[f"ids:{name}"] = st.expert_ids.to(torch.int64)
        out[f"experts:{name}:A"] = st.lora_A
        out[f"experts:{name}:B"] = st.lora_B
        out[f"token_proj:{name}"] = st.token_proj
        if st.shared_A is not None:
            out[f"shared:{name}:A"] = st.shared_A
            out[f"shared:{name}:B"] = st.shared_B
        if st.gate is not None:
            out[f"gate:{name}"] = st.gate
    return out


def unpack_modules(tensors: Mapping[str, torch.Tensor]) -> dict[str, ModuleState]:
    """Inverse of :func:`pack_modules`.

    Raises:
        KeyError: a module's ids, experts or token projection is missing.
    """
    names = sorted(k.split(":", 1)[1] for k in tensors if k.startswith("ids:"))
    out = {}
    for name in names:
        out[name] = ModuleState(
            expert_ids=tensors[f"ids:{name}"],
            lora_A=tensors[f"experts:{name}:A"],
            lora_B=tensors[f"experts:{name}:B"],
            shared_A=tensors.get(f"shared:{name}:A"),
            shared_B=tensors.get(f"shared:{name}:B"),
            token_proj=tensors[f"token_proj:{name}"],
            gate=tensors.get(f"gate:{name}"),
        )
    return out


def pack_stats(stats: Mapping[str, ModuleStats]) -> dict[str, torch.Tensor]:
    """Flatten RSEA statistics: mean token (r,) and mean expert (n, r) embeddings per module."""
    out: dict[str, torch.Tensor] = {}
    for name, st in stats.items():
        out[f"embeddings:{name}:token"] = st.token
        out[f"embeddings:{name}:experts"] = st.experts
    return out


def unpack_stats(
    tensors: Mapping[str, torch.Tensor],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (token (r,), experts (n, r))}`` from a message's embedding tensors."""
    out = {}
    for key in tensors:
        if key.startswith("embeddings:") and key.endswith(":token"):
            name = key[len("embeddings:") : -len(":token")]
            out[name] = (tensors[key], tensors[f"embeddings:{name}:experts"])
    return out
