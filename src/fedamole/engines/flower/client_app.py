"""The Flower ClientApp: ``local_update`` of the run's algorithm, with this node's data only.

Two message types arrive (see :mod:`fedamole.engines.flower.server_app`):

- ``query`` (the handshake, once per node and run): the server's resolved config (TOML text) and,
  in simulation, a folder for state snapshots. The app keeps them in ``context.state``, checks
  that this node's data loads, and answers with its client index, ``node_config["partition-id"]``.
- ``train`` (every round): one :class:`~fedamole.federated.messages.ServerMessage`; the app runs
  ``algo.local_update`` and answers with the ``ClientMessage``. With ``flower.secagg`` it holds
  back the tensors its algorithm averages over every client, and the SecAgg+ stages that follow
  (also ``train`` messages, Flower's own) go through Flower's ``secaggplus_mod``
  (:mod:`fedamole.engines.flower.secagg`).

Where the data comes from: with ``node_config["data-file"]`` (deployment) this owner's local file
(:func:`fedamole.data.node.load_node_data`); without it (simulation) partition ``partition-id`` of
:func:`fedamole.data.load_federated_data`, exactly as the embedded engine splits the data.

Client-private state (the algorithm's ``ClientContext.state``: held experts, data-stream position,
privacy clipper, a baseline's local adapter) lives in ``context.state``, so an ephemeral ClientApp
process resumes where the last one stopped. It is also snapshotted after every round to
``<state-dir>/client_NNN/round_RRR`` (``RRR``: the message's round, the ``round`` of the server's
checkpoint of that round) when a state folder is known (``node_config["state-dir"]``, or the one
the server sends in simulation): a restarted ServerApp (``--resume``) starts a new Flower run with
an empty ``context.state``, and the snapshot of the round before the resumed one makes it continue
exactly. The last two rounds' snapshots are kept, and the one of the run's best round (the round of
``checkpoints/best``, which the server names in each ``train`` message's ``fedamole.keep`` record:
only it knows the scores), so ``fedamole export --round best`` finds the client's state there.

The backbone, the prepared algorithm and the data are cached per process: once per Ray actor in
simulation, once per message in deployment, where Flower starts a fresh ClientApp process for every
message. Each reply carries a ``fedamole.runtime`` record (load and work seconds) so the server can
report that cost.
"""

from __future__ import annotations

import logging
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms.base import Algorithm, ClientContext
from fedamole.algorithms.registry import algorithm_spec
from fedamole.algorithms.runtime import build_runtime
from fedamole.config import Config
from fedamole.data.types import ClientData
from fedamole.engines.common import check_injected_failure
from fedamole.engines.flower.records import (
    STATE_KEY,
    STATE_TENSORS_KEY,
    message_from_record,
    message_to_record,
    state_from_records,
    state_to_records,
)
from fedamole.engines.flower.secagg import SECAGG_KEY, handles, hold_back, secure_train
from fedamole.federated.messages import ServerMessage
from fedamole.rundir import client_snapshot, client_snapshots, load_checkpoint, save_checkpoint

__all__ = ["KEEP_KEY", "RUNTIME_KEY", "SETUP_KEY", "app"]

log = logging.getLogger("fedamole")

SETUP_KEY = "fedamole.setup"
RUNTIME_KEY = "fedamole.runtime"
NODE_KEY = "fedamole.node"
KEEP_KEY = "fedamole.keep"
_STATE_META = "fedamole.state.meta"
_KEEP_SNAPSHOTS = 2

app = ClientApp()


@dataclass
class _Runtime:
    """What one process loads once: config, prepared backbone, algorithm, data."""

    cfg: Config
    algo: Algorithm
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    load_s: float
    data: dict[int, ClientData] = field(default_factory=dict)
    caches: dict[int, dict[str, Any]] = field(default_factory=dict)


_RUNTIMES: dict[str, _Runtime] = {}  # by config text: one per run in this process


@app.query()
def setup(msg: Message, context: Context) -> Message:
    """Handshake: keep the run's config, check this node's data, answer with the client index."""
    sent = msg.content.config_records[SETUP_KEY]
    context.state.config_records[SETUP_KEY] = ConfigRecord(dict(sent))
    cfg = _parse_config(str(sent["config"]))
    client = _client_index(context, cfg)
    data = _client_data(cfg, client, context.node_config, {})
    reply = ConfigRecord({"partition-id": client, "train-examples": len(data.train)})
    return Message(RecordDict({NODE_KEY: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of ``local_update`` for this node's client."""
    started = time.time()
    if SETUP_KEY not in context.state.config_records:
        raise RuntimeError("no handshake received for this run; the server must query first")
    setup_record = context.state.config_records[SETUP_KEY]
    if handles(msg):  # a SecAgg+ stage
        cfg = _parse_config(str(setup_record["config"]))
        return secure_train(msg, context, cfg, _client_index(context, cfg))
    runtime, loaded_now = _runtime(str(setup_record["config"]))
    cfg = runtime.cfg
    client = _client_index(context, cfg)
    server_msg = message_from_record(msg.content)
    if not isinstance(server_msg, ServerMessage) or server_msg.client != client:
        raise ValueError(f"message for client {server_msg.client} reached client {client}")
    t_data = time.perf_counter()
    data = _client_data(cfg, client, context.node_config, runtime.data)
    data_s = time.perf_counter() - t_data
    state_dir = _state_dir(context, setup_record)
    state = _restore_state(context, client, server_msg.round, state_dir)
    cache = runtime.caches.setdefault(client, {})
    ctx = ClientContext(client, data, runtime.model, runtime.tokenizer, state, cache)
    check_injected_failure(cfg, server_msg.round, client)
    t_work = time.perf_counter()
    update = runtime.algo.local_update(server_msg.round, server_msg, ctx)
    work_s = time.perf_counter() - t_work
    held = None
    if cfg.flower.secagg != "none":
        kinds = algorithm_spec(cfg.federation.algorithm).secure_kinds
        update, held = hold_back(context, update, kinds)
    keep = msg.content.config_records.get(KEEP_KEY)  # the run's best round, when it has one
    keep_round = int(keep["round"]) if keep is not None else None
    _store_state(context, ctx.state, client, server_msg.round, state_dir, keep_round)
    timing = {
        "handler-start": started,
        "load-s": (runtime.load_s if loaded_now else 0.0) + data_s,
        "work-s": work_s,
    }
    content = message_to_record(update)
    content[RUNTIME_KEY] = ConfigRecord(timing)
    if held is not None:
        content[SECAGG_KEY] = held
    return Message(content, reply_to=msg)


def _parse_config(text: str) -> Config:
    return Config.model_validate(tomllib.loads(text))


def _runtime(config_text: str) -> tuple[_Runtime, bool]:
    """This process's runtime for the run, and whether it was loaded by this call."""
    if config_text in _RUNTIMES:
        return _RUNTIMES[config_text], False
    t0 = time.perf_counter()
    cfg = _parse_config(config_text)
    torch.manual_seed(cfg.run.seed)
    built = build_runtime(cfg)
    _RUNTIMES.clear()  # one run at a time per process: free the previous backbone
    _RUNTIMES[config_text] = runtime = _Runtime(
        cfg, built.algo, built.model, built.tokenizer, time.perf_counter() - t0
    )
    return runtime, True


def _client_index(context: Context, cfg: Config) -> int:
    n = cfg.federation.num_clients
    raw = context.node_config.get("partition-id")
    if raw is None or isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < n:
        raise ValueError(
            f"node config `partition-id` ({raw!r}) must be an integer in 0..{n - 1}: start the "
            f"SuperNode with --node-config 'partition-id=K data-file=\"...\"'"
        )
    return raw


def _client_data(
    cfg: Config, client: int, node_config: Any, cached: dict[int, ClientData]
) -> ClientData:
    if client in cached:
        return cached[client]
    if "data-file" in node_config:
        from fedamole.data.node import load_node_data

        cached[client] = load_node_data(cfg, str(node_config["data-file"]), client=client)
    else:
        from fedamole.data import load_federated_data

        cached.update(enumerate(load_federated_data(cfg).clients))
    return cached[client]


def _state_dir(context: Context, setup_record: ConfigRecord) -> Path | None:
    where = context.node_config.get("state-dir") or setup_record.get("state-dir")
    return Path(str(where)) if where else None


def _restore_state(context: Context, client: int, rnd: int, state_dir: Path | None) -> dict:
    """The newest state from before round ``rnd``: ``context.state``, else a snapshot."""
    meta = context.state.config_records.get(_STATE_META)
    if meta is not None and int(meta["round"]) < rnd:
        arrays = context.state.array_records[STATE_TENSORS_KEY]
        return state_from_records(arrays, context.state.config_records[STATE_KEY])
    for snap_round, snapshot in _newest_first(state_dir, client):
        if snap_round < rnd:
            log.info("client %d: state restored from the snapshot of round %d", client, snap_round)
            return dict(load_checkpoint(snapshot)["state"])
    return {}


def _store_state(
    context: Context,
    state: dict[str, Any],
    client: int,
    rnd: int,
    state_dir: Path | None,
    keep: int | None = None,
) -> None:
    """Keep ``state`` in ``context.state`` and snapshot it as round ``rnd``'s; prune the
    snapshots but the last :data:`_KEEP_SNAPSHOTS` and the one that holds the state after round
    ``keep`` (the best round's: its own, or the newest before it when the client failed in it)."""
    arrays, manifest = state_to_records(state)
    context.state.array_records[STATE_TENSORS_KEY] = arrays
    context.state.config_records[STATE_KEY] = manifest
    context.state.config_records[_STATE_META] = ConfigRecord({"round": rnd})
    if state_dir is None:
        return
    save_checkpoint(client_snapshot(state_dir, client, rnd), {"state": state})
    snapshots = _newest_first(state_dir, client)
    best = next((r for r, _ in snapshots if keep is not None and r <= keep), None)
    for snap_round, old in snapshots[_KEEP_SNAPSHOTS:]:
        if snap_round != best:
            shutil.rmtree(old)


def _newest_first(state_dir: Path | None, client: int) -> list[tuple[int, Path]]:
    """``(round, folder)`` of ``client``'s snapshots, newest first."""
    return sorted(client_snapshots(state_dir, client).items(), reverse=True)
