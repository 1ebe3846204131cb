"""SecAgg+ on the Flower engine: the means over every client, summed with Flower's own protocol
(``flower.secagg = "secaggplus"``; docs/algorithm.md#secure-aggregation).

Flower's :class:`~flwr.server.workflow.SecAggPlusWorkflow` (server) and
:func:`~flwr.client.mod.secaggplus_mod` (client) run the protocol: setup (key pairs), share keys
(Shamir shares of each client's mask seed and key, encrypted to its neighbours), collect masked
vectors (each client's weighted, quantized vector plus pairwise and private masks, modulo
``modulus_range``), unmask (shares that remove the masks, and those of a client that dropped out).
We use both as they are, with no crypto of our own, and drive them from our round:

1. The ``train`` round runs as without SecAgg+, except that each client holds back the tensors of
   the kinds its algorithm only ever averages over every client (the registration's
   ``secure_kinds``: FedIT's adapter, FedAMoLE's shared expert and token projection). It keeps
   them in ``context.state`` and names them in the reply (a ``fedamole.secagg`` record: round,
   keys, dtypes); everything else travels as before.
2. :class:`SecureAggregation` then runs the workflow once over the clients that replied, in the
   same round, with a one-round legacy strategy (:class:`_MeanStrategy`) whose ``configure_fit``
   names those clients and whose ``aggregate_fit`` receives the unmasked mean, the only vector the
   server ever reconstructs. In the collect stage the client's ``train`` handler hands the
   ``secaggplus_mod`` its held tensors, in the server's key order, with its weight as
   ``num_examples`` (1, or its example count with ``federation.weighting = "examples"``; the server
   sets ``max_weight`` to the largest, so no weight exceeds it).
3. Each client that took part gets the mean in place of the tensors it held back, exactly as
   Flower's workflow hands every ``FitRes`` the aggregate, and the algorithm aggregates as usual:
   its mean over the participants of equal tensors is that mean. A client that left the protocol
   (an error, a timeout, a vector it could not contribute) fails the round, so the algorithm's
   clients are the sum's (one the server then rejects for its clear upload or a non-finite
   metric stays in the sum: nobody can take it out).

Why this shape: Flower's mod empties every ``ArrayRecord`` of the reply it masks, so the clear
tensors cannot ride in the collect stage's reply (hence the separate ``train`` round first); the
workflow sends its stages as plain ``train`` messages, so our ``train`` handler tells them apart
by Flower's ``secaggplus_configs`` record (:func:`handles`); and the workflow takes a legacy
``Strategy`` and ``LegacyContext``, hence the small adapter.

**Quantization.** Each client scales by ``d = round(w / max_weight * Q) / Q``, clips to
``[-c, c]`` (``c = clipping_range``; a client whose values exceed ``c`` refuses rather than be
clipped) and rounds stochastically to ``Q = quantization_range`` levels, an error below
``2c/Q`` per entry; the server divides the sum by ``sum(d)``. So each entry of the mean is within
``n * 2c / (Q * sum(d))`` of the mean with weights ``d``: ``2c/Q`` (4.8e-7 by default) when
unweighted. Flower draws the rounding from numpy's global generator; the client seeds it from
``(run.seed, round, client)`` for the call and restores it, so runs and resumes are reproducible.

**What it does not protect.** The server still sees everything else in the clear (FedAMoLE's
domain experts and RSEA statistics, metrics, example counts) and the mean itself, which the next
global model reveals to every client; it cannot screen the summed tensors (each client checks its
own for NaN/Inf and range before masking). The sum needs at least
:data:`~fedamole.config.checks.SECAGG_MIN_CLIENTS` clients and ``reconstruction_threshold``
answering in each stage; a round with fewer fails its clients.

``wire.jsonl`` gets one record per client and round with the serialized bytes of the protocol's
four exchanges (``secagg_down_serialized``, ``secagg_up_serialized``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedamole.algorithms.base import client_seed
from fedamole.config import Config
from fedamole.config.checks import SECAGG_MIN_CLIENTS, secagg_shares
from fedamole.engines.flower.records import tensor_to_array
from fedamole.federated.messages import ClientMessage

__all__ = [
    "SECAGG_KEY",
    "Held",
    "SecureAggregation",
    "describe_secagg",
    "handles",
    "held_of",
    "hold_back",
    "secure_train",
]

log = logging.getLogger("fedamole")

SECAGG_KEY = "fedamole.secagg"
"""A ``train`` reply's record naming the held-back tensors (also kept in ``context.state``)."""
_HELD = "fedamole.secagg.tensors"  # context.state: the held-back tensors (one key namespace)


# ------------------------------------------------------------------------------------- client side


def hold_back(
    context: Context, update: ClientMessage, kinds: Iterable[str]
) -> tuple[ClientMessage, ConfigRecord | None]:
    """Keep the tensors of ``kinds`` in ``context.state`` (for the collect stage) and return the
    update without them, with the reply's ``fedamole.secagg`` record (``None``: none held)."""
    wanted = frozenset(kinds)
    held = {k: t for k, t in sorted(update.tensors.items()) if k.split(":", 1)[0] in wanted}
    if not held:
        return update, None
    context.state.array_records[_HELD] = ArrayRecord(
        {k: tensor_to_array(t.float()) for k, t in held.items()}
    )
    record = ConfigRecord(
        {
            "round": update.round,
            "keys": list(held),
            "dtypes": [str(t.dtype).removeprefix("torch.") for t in held.values()],
        }
    )
    context.state.config_records[SECAGG_KEY] = record
    clear = {k: t for k, t in update.tensors.items() if k not in held}
    return replace(update, tensors=clear), record


def handles(msg: Message) -> bool:
    """Whether ``msg`` is a SecAgg+ stage (Flower's workflow sends them as ``train`` too)."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


def secure_train(msg: Message, context: Context, cfg: Config, client: int) -> Message:
    """One SecAgg+ stage, through Flower's ``secaggplus_mod``; in the collect stage the mod masks
    what :func:`_contribute` returns. Numpy's global generator, which Flower's quantization
    draws from, is seeded from ``(run.seed, round, client)`` for the call and then restored."""
    rnd = int(msg.metadata.group_id)
    saved = np.random.get_state()
    np.random.seed(client_seed(cfg.run.seed + 3, rnd, client) % 2**32)
    try:
        return secaggplus_mod(msg, context, lambda m, c: _contribute(m, c, cfg))
    finally:
        np.random.set_state(saved)


def _contribute(msg: Message, context: Context, cfg: Config) -> Message:
    """The collect stage's ``FitRes``: the held tensors in the server's key order, the weight as
    ``num_examples``.

    Raises:
        RuntimeError: nothing of that round held, a key missing, a NaN/Inf, or a value beyond
            ``clipping_range`` (Flower would clip it and the mean would be wrong): the client
            leaves the protocol, and the server fails it for the round.
    """
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True).config
    rnd, keys = int(ins["round"]), json.loads(str(ins["keys"]))
    meta = context.state.config_records.get(SECAGG_KEY)
    if meta is None or int(meta["round"]) != rnd:
        raise RuntimeError(f"no update of round {rnd} held for secure aggregation")
    held = context.state.array_records[_HELD]
    missing = sorted(set(keys) - set(held))
    if missing:
        raise RuntimeError(f"secure aggregation asked for tensors not held: {missing[:3]}")
    arrays = [np.asarray(held[k].numpy(), dtype=np.float64) for k in keys]
    clip = cfg.flower.secaggplus.clipping_range
    for key, arr in zip(keys, arrays, strict=True):
        if not np.isfinite(arr).all():
            raise RuntimeError(f"{key}: NaN/Inf values cannot enter the secure sum")
        if arr.size and np.abs(arr).max() > clip:
            raise RuntimeError(
                f"{key}: |value| up to {np.abs(arr).max():.4g} exceeds "
                f"`flower.secaggplus.clipping_range` ({clip:g}), which would clip it; raise it"
            )
    del context.state.array_records[_HELD], context.state.config_records[SECAGG_KEY]
    status = Status(Code.OK, "")
    fitres = FitRes(status, ndarrays_to_parameters(arrays), int(ins["weight"]), {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# ------------------------------------------------------------------------------------- server side


def describe_secagg(cfg: Config) -> str:
    """The run's SecAgg+ in one line for the log: what is summed securely, what is not."""
    from fedamole.algorithms.registry import algorithm_spec

    spec = algorithm_spec(cfg.federation.algorithm)
    shares, threshold = secagg_shares(cfg.flower, cfg.federation.num_clients)
    s = cfg.flower.secaggplus
    step = 2 * s.clipping_range / s.quantization_range
    clear = (
        f"; IN THE CLEAR: {spec.clear_groups} ({cfg.mole.clients_per_expert}), which the server "
        "sees per client (`flower.secaggplus.experts_in_clear`)"
        if spec.clear_groups
        else ""
    )
    return (
        f"SecAgg+ (Flower's workflow): the server sees only the mean over all clients of "
        f"{', '.join(spec.secure_kinds)} ({shares} shares, threshold {threshold}; quantization "
        f"step {step:.3g}; values beyond +-{s.clipping_range:g} refused){clear}"
    )


@dataclass(frozen=True)
class Held:
    """What one client holds for the secure sum (its reply's ``fedamole.secagg`` record)."""

    keys: tuple[str, ...]
    dtypes: tuple[str, ...]


def held_of(content: RecordDict) -> Held | None:
    """The ``fedamole.secagg`` record of a ``train`` reply, or ``None``."""
    record = content.config_records.get(SECAGG_KEY)
    if record is None:
        return None
    return Held(tuple(map(str, record["keys"])), tuple(map(str, record["dtypes"])))


@dataclass
class SecureAggregation:
    """Runs Flower's SecAgg+ workflow once per round over the clients that hold tensors.

    Attributes:
        cfg: the run's config (``flower.secaggplus``, ``federation.weighting``).
        wire: per client, the serialized bytes ``(down, up)`` of the last round's protocol.
    """

    cfg: Config
    wire: dict[int, tuple[int, int]] = field(default_factory=dict)

    def complete(
        self,
        grid: Grid,
        rnd: int,
        outcomes: dict[int, Any],
        held: Mapping[int, Held],
        node_of: Mapping[int, int],
    ) -> None:
        """Sum what ``held``'s clients hold and put the mean into their outcomes (in place); a
        client that cannot take part, or leaves the protocol, gets an error outcome."""
        self.wire = {}
        common = self._participants(rnd, outcomes, held)
        if common is None:
            return
        nodes = {node_of[c]: c for c, h in held.items() if h == common}
        weights = {n: self._weight(outcomes[c]) for n, c in nodes.items()}
        strategy = _MeanStrategy(rnd, common.keys, weights)
        counting = _CountingGrid(grid)
        shares, threshold = secagg_shares(self.cfg.flower, self.cfg.federation.num_clients)
        s = self.cfg.flower.secaggplus
        workflow = SecAggPlusWorkflow(
            shares,
            threshold,
            max_weight=float(max(weights.values())),
            clipping_range=s.clipping_range,
            quantization_range=s.quantization_range,
            modulus_range=s.modulus_range,
            timeout=self.cfg.flower.round_timeout,
        )
        workflow(counting, _legacy_context(rnd, strategy, grid, nodes))
        self.wire = {nodes[n]: sizes for n, sizes in counting.sizes.items() if n in nodes}
        for node, client in nodes.items():
            if strategy.mean is None or node not in strategy.summed:
                reason = counting.errors.get(node, "it left the protocol or the protocol halted")
                outcomes[client] = RuntimeError(f"secure aggregation failed: {reason}")
                continue
            tensors = {
                key: torch.from_numpy(arr).to(getattr(torch, dtype))
                for key, dtype, arr in zip(common.keys, common.dtypes, strategy.mean, strict=True)
            }
            update = outcomes[client]
            outcomes[client] = replace(update, tensors={**update.tensors, **tensors})
        if strategy.mean is not None:
            log.info("round %d: SecAgg+ mean of %d clients", rnd, len(strategy.summed))

    def _participants(
        self, rnd: int, outcomes: dict[int, Any], held: Mapping[int, Held]
    ) -> Held | None:
        """What the sum is over: the tensors most clients hold (the others fail), or ``None``
        (and every holder fails) when too few hold them to hide one among them."""
        if not held:
            return None
        kinds = sorted(set(held.values()), key=lambda h: h.keys)  # the most common, ties: first
        common = max(kinds, key=lambda h: sum(v == h for v in held.values()))
        for client in sorted(c for c, h in held.items() if h != common):
            outcomes[client] = ValueError(f"client {client} holds other tensors than the rest")
        clients = sorted(c for c, h in held.items() if h == common)
        _, threshold = secagg_shares(self.cfg.flower, self.cfg.federation.num_clients)
        need = max(SECAGG_MIN_CLIENTS, threshold)
        if len(clients) >= need:
            return common
        for client in clients:
            outcomes[client] = RuntimeError(
                f"secure aggregation needs {need} clients and only {len(clients)} replied "
                f"in round {rnd}; their updates are left out"
            )
        return None

    def _weight(self, update: ClientMessage) -> int:
        if self.cfg.federation.weighting != "examples":
            return 1
        count = update.config.get("num_examples")
        return count if isinstance(count, int) and count > 0 else 1  # the algorithm rejects it


def _legacy_context(
    rnd: int, strategy: Strategy, grid: Grid, nodes: Iterable[int]
) -> LegacyContext:
    """The workflow's context: this round's number, no global parameters, ``strategy``, and a
    client manager holding a proxy of each node (what ``configure_fit`` samples)."""
    state = RecordDict()
    state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    manager = SimpleClientManager()
    for node in sorted(nodes):
        manager.register(GridClientProxy(node, grid, 0))
    base = Context(run_id=0, node_id=0, node_config={}, state=state, run_config={})
    return LegacyContext(base, ServerConfig(num_rounds=1), strategy, manager)


class _MeanStrategy(Strategy):
    """A one-round legacy strategy for the workflow: ``configure_fit`` sends every registered
    node the keys to contribute and its weight, ``aggregate_fit`` keeps the unmasked mean and who
    is in it."""

    def __init__(self, rnd: int, keys: tuple[str, ...], weights: Mapping[int, int]):
        self.rnd, self.keys, self.weights = rnd, json.dumps(list(keys)), dict(weights)
        self.mean: list[np.ndarray] | None = None
        self.summed: set[int] = set()

    def configure_fit(self, server_round, parameters, client_manager):
        config = {"round": self.rnd, "keys": self.keys}
        return [
            (proxy, FitIns(Parameters([], ""), {**config, "weight": self.weights[proxy.node_id]}))
            for _, proxy in sorted(client_manager.all().items())
        ]

    def aggregate_fit(self, server_round, results, failures):
        self.summed = {proxy.node_id for proxy, _ in results}
        if results:  # every FitRes carries the same aggregate (the workflow's compatibility)
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _CountingGrid(Grid):
    """A Grid that forwards to another and counts, per node, the serialized bytes sent to and
    received from it, and the reason of each error reply."""

    def __init__(self, grid: Grid):
        self.inner = grid
        self.sizes: dict[int, tuple[int, int]] = {}
        self.errors: dict[int, str] = {}

    def send_and_receive(self, messages, *, timeout=None):
        from fedamole.engines.flower.server_app import wire_size

        messages = list(messages)
        for msg in messages:
            self._add(msg.metadata.dst_node_id, down=wire_size(msg))
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.errors[node] = reply.error.reason
            else:
                self._add(node, up=wire_size(reply))
        return replies

    def _add(self, node: int, *, down: int = 0, up: int = 0) -> None:
        d, u = self.sizes.get(node, (0, 0))
        self.sizes[node] = (d + down, u + up)

    @property
    def run(self):
        return self.inner.run

    def set_run(self, run_id):
        self.inner.set_run(run_id)

    def create_message(self, *args, **kwargs):
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.inner.get_node_ids()

    def push_messages(self, messages):
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.inner.pull_messages(message_ids)
