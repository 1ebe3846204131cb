"""The Flower ServerApp: the shared round loop (:mod:`fedamole.engines.common`) over a Flower Grid.

:func:`serve` is the ServerApp's ``main``: it opens the run directory, builds the algorithm's
server state exactly as the embedded engine does, connects the nodes and hands
:func:`~fedamole.engines.common.run_federation` a :class:`FlowerClients`, which delivers each round:

- **handshake** (``query``): node ids are random per run, so every new node gets the resolved
  config and answers with its client index (``node_config["partition-id"]``). It happens before
  round one (waiting ``flower.connect_timeout`` seconds for all ``federation.num_clients`` nodes)
  and again whenever an unknown node appears, so a restarted SuperNode rejoins.
- **rounds** (``train``): one Flower ``Message`` per client with that client's own content (FedAMoLE
  clients hold different experts), all sent with one ``grid.send_and_receive(..., timeout=
  flower.round_timeout)``. A client whose node is gone, whose reply is an error, or that does not
  answer in time is logged and left out of that round, as a crashing client is on the embedded
  engine; the run goes on. Each message also names, in a ``fedamole.keep`` record, the round of
  the run's ``checkpoints/best``, whose state snapshot the client keeps besides its last two
  (:mod:`fedamole.engines.flower.client_app`).
- **secure aggregation** (``flower.secagg``, :mod:`fedamole.engines.flower.secagg`): after the
  ``train`` replies, Flower's SecAgg+ workflow sums what the clients held back (the means over
  every client) in four more exchanges, and each participant's update gets the mean.

Besides the shared logs, the run directory gets ``wire.jsonl``: per round and client, the
serialized size of the Flower messages (every object Flower ships: message, records, arrays)
beside our payload bytes (``nbytes()``, what ``comm.jsonl`` counts), and the client's load and
work seconds (appended: a round replayed after ``--resume`` appears twice).

The module-level ``app`` is the deployment component (``deploy/flower/pyproject.toml``); it reads
its settings from the run config (:meth:`ServerSettings.from_run_config`). Simulation builds an
equivalent app around given settings (:func:`make_server_app`).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedamole.algorithms.base import Algorithm
from fedamole.algorithms.runtime import build_runtime
from fedamole.config import Config, ConfigError, load
from fedamole.data import DataError, load_federated_data
from fedamole.engines.common import (
    Outcome,
    RoundCallback,
    open_run,
    run_federation,
)
from fedamole.engines.flower.client_app import KEEP_KEY, NODE_KEY, RUNTIME_KEY, SETUP_KEY
from fedamole.engines.flower.records import message_from_record, message_to_record
from fedamole.engines.flower.secagg import Held, SecureAggregation, describe_secagg, held_of
from fedamole.engines.summary import RunResult
from fedamole.federated.messages import ClientMessage, ServerMessage
from fedamole.preflight import secagg_errors
from fedamole.rundir import (
    BEST,
    CheckpointError,
    JsonlLogger,
    RecordHook,
    RunDir,
    checkpoint_info,
    config_mismatch,
    default_run_dir,
)

__all__ = ["FlowerClients", "ServerSettings", "app", "make_server_app", "serve", "wire_size"]

log = logging.getLogger("fedamole")

app = ServerApp()


@dataclass
class ServerSettings:
    """What the ServerApp runs: the config, the run directory, and how to open it.

    Attributes:
        cfg: the resolved config.
        run_dir: the run directory.
        resume: continue the run from its checkpoint.
        overwrite: move an existing run directory aside first.
        state_dir: a folder the clients can write their state snapshots to (simulation: the
            run's ``checkpoints/clients``); ``None`` leaves it to each node's ``state-dir``.
        on_round: called with each round's number before it runs
            (:func:`~fedamole.engines.common.run_federation`).
        on_record: called with every record written to ``metrics.jsonl`` (ditto; the hooks the
            config names, ``run.tensorboard`` and ``run.hooks``, run on this server too).
        result: set by :func:`serve` when the run ends.
    """

    cfg: Config
    run_dir: Path
    resume: bool = False
    overwrite: bool = False
    state_dir: Path | None = None
    on_round: RoundCallback | None = None
    on_record: RecordHook | None = None
    result: RunResult | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerSettings:
        """Settings from a Flower run config (``[tool.flwr.app.config]`` plus ``--run-config``).

        Keys: ``config`` (the fedamole TOML; relative paths are taken from the current folder),
        ``overrides`` (``"key=value ..."``), ``run-dir`` (default ``run.out_dir/run.name``),
        ``resume`` and ``overwrite`` (booleans). A ``resume`` needs the config the run was started
        with, as ``fedamole run --resume`` does (:func:`~fedamole.rundir.config_mismatch`): the
        same TOML and overrides, or the run directory's own ``config.toml``.

        Raises:
            ValueError: no ``config``, or ``resume`` with a config other than the run's (the
                message names the differing fields and the run config that resumes it).
        """
        if not run_config.get("config"):
            raise ValueError(
                "the run config names no experiment: pass --run-config 'config=\"/path/exp.toml\"'"
            )
        overrides = shlex.split(str(run_config.get("overrides", "")))
        cfg = load(Path(str(run_config["config"])).expanduser(), overrides)
        run_dir = Path(str(run_config.get("run-dir") or default_run_dir(cfg.run)))
        resume = bool(run_config.get("resume", False))
        if resume:
            _check_resume(cfg, RunDir(run_dir))
        return cls(cfg, run_dir, resume=resume, overwrite=bool(run_config.get("overwrite", False)))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment entry point: settings from the run config, then :func:`serve`."""
    serve(grid, ServerSettings.from_run_config(context.run_config))


def make_server_app(settings: ServerSettings) -> ServerApp:
    """A ServerApp that serves ``settings`` (simulation passes settings, not a run config)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        serve(grid, settings)

    return server


def serve(grid: Grid, settings: ServerSettings) -> RunResult:
    """Run (or resume) the experiment over ``grid``; see the module docstring."""
    cfg = settings.cfg
    refused = secagg_errors(cfg)
    if refused:
        raise ConfigError(refused)
    run = open_run(cfg, settings.run_dir, resume=settings.resume, overwrite=settings.overwrite)
    try:
        if cfg.flower.secagg != "none":
            log.info("%s", describe_secagg(cfg))
        runtime = build_runtime(cfg)
        algo = runtime.algo
        _observe_partition(cfg, algo)
        algo.setup(runtime.model)
        del runtime  # the server keeps only the algorithm's state
        setup: dict[str, Any] = {"config": tomli_w.dumps(cfg.to_dict())}
        if settings.state_dir is not None:
            setup["state-dir"] = str(settings.state_dir.resolve())
        wire = JsonlLogger(run.wire)
        try:
            clients = FlowerClients(grid, cfg, setup, wire, checkpoints=run.checkpoints)
            clients.connect()
            settings.result = run_federation(
                cfg,
                run,
                algo,
                clients,
                resume=settings.resume,
                on_round=settings.on_round,
                on_record=settings.on_record,
            )
        finally:
            wire.close()
    finally:
        run.release()
    return settings.result


class FlowerClients:
    """The run's clients behind a Flower Grid: handshake, one message per client, replies.

    ``checkpoints``: the run's checkpoint folder, whose ``best`` round each ``train`` message
    names (``fedamole.keep``) so the clients keep that round's state snapshot; ``None`` names none.
    """

    def __init__(
        self,
        grid: Grid,
        cfg: Config,
        setup: Mapping[str, Any],
        wire: JsonlLogger | None = None,
        *,
        checkpoints: Path | None = None,
    ):
        self.grid, self.cfg, self.setup, self.wire = grid, cfg, dict(setup), wire
        self.checkpoints = checkpoints
        self.node_of: dict[int, int] = {}  # client index -> node id
        self.secagg = SecureAggregation(cfg) if cfg.flower.secagg != "none" else None
        self.queried: set[int] = set()  # nodes that answered the handshake (or refused it)

    def connect(self) -> None:
        """Wait until every client's node has answered the handshake.

        Raises:
            TimeoutError: not all nodes connected within ``flower.connect_timeout`` seconds.
        """
        n, timeout = self.cfg.federation.num_clients, self.cfg.flower.connect_timeout
        deadline = time.monotonic() + timeout
        while True:
            self._discover(max(1.0, deadline - time.monotonic()))
            if len(self.node_of) == n:
                break
            if time.monotonic() > deadline:
                missing = sorted(set(range(n)) - set(self.node_of))
                raise TimeoutError(
                    f"only {len(self.node_of)} of {n} clients connected within {timeout:g} s "
                    f"(`flower.connect_timeout`); no node with partition-id in {missing}"
                )
            time.sleep(1.0)
        log.info("%d nodes connected: %s", n, _mapping(self.node_of))

    def run_round(
        self, rnd: int, messages: Mapping[int, ServerMessage]
    ) -> Iterator[tuple[int, Outcome]]:
        live = self._discover(self.cfg.flower.connect_timeout)
        keep = self._best_round()
        outcomes: dict[int, Outcome] = {}
        sent: dict[int, tuple[int, Message]] = {}  # node -> (client, message)
        for client in sorted(messages):
            node = self.node_of.get(client)
            if node is None or node not in live:
                outcomes[client] = ConnectionError(f"client {client} has no connected node")
                continue
            content = message_to_record(messages[client])
            if keep is not None:
                content[KEEP_KEY] = ConfigRecord({"round": keep})
            msg = Message(
                content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(rnd)
            )
            sent[node] = (client, msg)
        down = {client: wire_size(msg) for client, msg in sent.values()}
        timeout = self.cfg.flower.round_timeout
        t_sent = time.time()
        replies = self.grid.send_and_receive([m for _, m in sent.values()], timeout=timeout)
        held: dict[int, Held] = {}  # client -> what it holds for SecAgg+
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in sent:
                continue
            client = sent[node][0]
            outcomes[client] = self._receive(rnd, client, reply, down[client], t_sent, messages)
            found = held_of(reply.content) if isinstance(outcomes[client], ClientMessage) else None
            if found is not None:
                held[client] = found
        for node, (client, _) in sent.items():
            outcomes.setdefault(
                client,
                TimeoutError(
                    f"no reply from node {node} within {timeout:g} s (`flower.round_timeout`)"
                ),
            )
        if self.secagg is not None:
            self._secure(rnd, outcomes, held)
        for client in sorted(messages):
            yield client, outcomes[client]

    def _secure(self, rnd: int, outcomes: dict[int, Outcome], held: Mapping[int, Held]) -> None:
        """SecAgg+ over the clients that hold tensors for it (:mod:`.secagg`): their outcomes get
        the mean, or an error; ``wire.jsonl`` gets the protocol's bytes per client."""
        assert self.secagg is not None
        self.secagg.complete(self.grid, rnd, outcomes, held, self.node_of)
        for client, (down_bytes, up_bytes) in sorted(self.secagg.wire.items()):
            if self.wire is not None:
                self.wire.log(
                    {
                        "round": rnd,
                        "client": client,
                        "secagg_down_serialized": down_bytes,
                        "secagg_up_serialized": up_bytes,
                    }
                )

    def states(self) -> dict[int, dict[str, Any]]:
        return {}  # clients keep their own state (context.state and snapshots)

    def _best_round(self) -> int | None:
        """The round of ``checkpoints/best``, whose snapshot the clients keep, or ``None``."""
        if self.checkpoints is None:
            return None
        try:
            info = checkpoint_info(self.checkpoints, BEST)
        except CheckpointError:  # an unreadable best is replaced at the next promotion
            return None
        return None if info is None or info["round"] is None else int(info["round"])

    def load_states(self, states: Mapping[int, Mapping[str, Any]]) -> None:
        return None

    def _receive(
        self,
        rnd: int,
        client: int,
        reply: Message,
        down_size: int,
        t_sent: float,
        messages: Mapping[int, ServerMessage],
    ) -> Outcome:
        if reply.has_error():
            return RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        update = message_from_record(reply.content)
        if not isinstance(update, ClientMessage) or update.client != client:
            return ValueError(f"node {reply.metadata.src_node_id} answered for {update.client}")
        if self.wire is not None:
            timing = reply.content.config_records.get(RUNTIME_KEY, ConfigRecord())
            started = float(timing.get("handler-start", t_sent))
            self.wire.log(
                {
                    "round": rnd,
                    "client": client,
                    "down_serialized": down_size,
                    "down_payload": messages[client].total_bytes(),
                    "up_serialized": wire_size(reply),
                    "up_payload": update.total_bytes(),
                    "start_latency_s": round(started - t_sent, 3),
                    "load_s": round(float(timing.get("load-s", 0.0)), 3),
                    "work_s": round(float(timing.get("work-s", 0.0)), 3),
                }
            )
        return update

    def _discover(self, timeout: float) -> set[int]:
        """Handshake with nodes not seen yet; returns the connected node ids."""
        live = set(self.grid.get_node_ids())
        new = sorted(live - self.queried)
        if not new:
            return live
        queries = [
            Message(
                RecordDict({SETUP_KEY: ConfigRecord(self.setup)}),
                dst_node_id=n,
                message_type=MessageType.QUERY,
            )
            for n in new
        ]
        for reply in self.grid.send_and_receive(queries, timeout=timeout):
            node = reply.metadata.src_node_id
            self.queried.add(node)
            if reply.has_error():
                log.error("node %d refused the handshake: %s", node, reply.error.reason)
                continue
            client = int(reply.content.config_records[NODE_KEY]["partition-id"])
            old = self.node_of.get(client)
            if old is not None and old != node and old in live:
                log.error(
                    "nodes %d and %d both claim partition-id %d; keeping %d", old, node, client, old
                )
                continue
            if old is not None and old != node:
                log.warning("client %d rejoined as node %d (was node %d)", client, node, old)
            self.node_of[client] = node
        return live


def _check_resume(cfg: Config, run: RunDir) -> None:
    """Refuse to resume ``run`` with a config other than the one it was started with.

    Raises:
        ValueError: its ``config.toml`` differs from ``cfg`` (or does not validate); the message
            names the fields and the run config that resumes the run with its own config.
    """
    if not run.config.exists():
        return  # RunDir.prepare says that there is nothing to resume
    own = f'--run-config \'config="{run.config.resolve()}" run-dir="{run.path}" resume=true\''
    try:
        saved = load(run.config)
    except ConfigError as exc:
        raise ValueError(
            f"cannot resume {run.path}: its {run.config.name} is not a valid config "
            f"({'; '.join(exc.errors)}); start the run again with overwrite=true"
        ) from None
    mismatch = config_mismatch(saved, cfg)
    if mismatch is not None:
        raise ValueError(
            f"{run.path} was started with another configuration ({mismatch}); resume it with the "
            f"same config and overrides, or with its own: {own}"
        )


def wire_size(message: Message) -> int:
    """Bytes of every object Flower serializes for ``message`` (message, records, arrays)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def _mapping(node_of: Mapping[int, int]) -> str:
    return ", ".join(f"client {c} = node {n}" for c, n in sorted(node_of.items()))


def _observe_partition(cfg: Config, algo: Algorithm) -> None:
    """The partition's categories per client, for an algorithm that observes them (FedAMoLE's
    group purity and ``oracle``), where this server can load the data (simulation, or a deployment
    whose server has a copy)."""
    if not algo.observes_partition:
        return
    try:
        data = load_federated_data(cfg)
    except DataError as exc:
        log.info("the server cannot load the data (%s): no group-purity diagnostics", exc)
        return
    algo.observe_partition(data.client_categories())
