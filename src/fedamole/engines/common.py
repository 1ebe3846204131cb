"""The round loop both engines share: one loop, two ways to reach clients
(docs/algorithm.md#engines).

An engine differs only in how a round's messages reach the clients and the replies come back: a
:class:`Clients` object. The embedded engine calls ``local_update`` in this process; the Flower
engine sends one Flower message per node and waits for the replies. Everything else lives here, so
both engines write the same run directory (``metrics.jsonl``, ``comm.jsonl``, ``assignments/``,
``checkpoints/``, ``log.txt``) from the same code:

1. :func:`open_run`: set torch's CPU threads, create (or reopen) the run directory, set up
   logging, seed torch.
2. :func:`run_federation`: restore a checkpoint on resume, open the record hooks that mirror
   ``metrics.jsonl`` (TensorBoard, ``run.hooks``, ``on_record``:
   :func:`~fedamole.rundir.open_hooks`), then for every round call the
   ``on_round`` callback (progress, or a test's simulated kill), :func:`play_round`, write the
   assignment and an atomic checkpoint (``checkpoints/last``, and ``checkpoints/best`` when the
   round is the best so far, :class:`~fedamole.engines.best.BestCheckpoint`); after the last
   round mark the run done (``done.json``).
3. :func:`play_round`: ``configure_round`` -> :meth:`Clients.run_round` -> log bytes and metrics per
   client (in client order) -> ``aggregate`` -> log rejections and ``server/round_seconds``.

Checkpoints hold the server state and whatever :meth:`Clients.states` returns: every client's
private state on the embedded engine, nothing on Flower, whose clients keep (and snapshot) their
own.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from fedamole.algorithms.runtime import set_threads
from fedamole.config import Config
from fedamole.engines.best import BestCheckpoint, checkpoint_or_none
from fedamole.engines.resume import received_too_late, restore
from fedamole.engines.summary import RunResult, format_summary, summarize_run
from fedamole.federated.messages import (
    ClientMessage,
    ServerMessage,
    split_step_key,
    unpack_predictions,
)
from fedamole.rundir import (
    BEST,
    LAST,
    SERVER_CLIENT,
    JsonlLogger,
    RecordHook,
    RecordHooks,
    RunDir,
    comm_record,
    metric_record,
    open_hooks,
    prediction_records,
    read_jsonl,
    save_checkpoint,
    setup_logging,
)
from fedamole.rundir.ledger import LEDGER, Ledger
from fedamole.rundir.records import assignment_text

if TYPE_CHECKING:
    from fedamole.algorithms.base import Algorithm

__all__ = [
    "Clients",
    "InjectedFailure",
    "RoundCallback",
    "RoundLogs",
    "RunFailedError",
    "check_injected_failure",
    "last_round",
    "open_run",
    "play_round",
    "run_federation",
]

log = logging.getLogger("fedamole")

Outcome = ClientMessage | BaseException


class InjectedFailure(RuntimeError):
    """A client failure requested by ``federation.fail_clients``."""


class RunFailedError(RuntimeError):
    """A round in which no client succeeded: the run stops, unfinished (no ``done.json``)."""


class Clients(Protocol):
    """How an engine reaches its clients."""

    def run_round(
        self, rnd: int, messages: Mapping[int, ServerMessage]
    ) -> Iterator[tuple[int, Outcome]]:
        """Deliver one message per client; yield ``(client, reply or the error)`` in client
        order, one item per client in ``messages``."""

    def states(self) -> dict[int, dict[str, Any]]:
        """Client-private states to put in the server's checkpoint (``{}``: clients keep them)."""

    def load_states(self, states: Mapping[int, Mapping[str, Any]]) -> None:
        """Restore :meth:`states` from a checkpoint."""


@dataclass
class RoundLogs:
    """The run's two JSON-lines logs, and the hooks that mirror ``metrics.jsonl`` (closed with
    them)."""

    metrics: JsonlLogger
    comm: JsonlLogger
    predictions: JsonlLogger  # per test example (docs/run-directory.md)
    hooks: RecordHooks | None = None

    def close(self) -> None:
        self.metrics.close()
        self.comm.close()
        self.predictions.close()
        if self.hooks is not None:
            self.hooks.close()


RoundCallback = Callable[[int], None]
"""Called with the round number before each round runs."""


def check_injected_failure(cfg: Config, rnd: int, client: int) -> None:
    """Raise :class:`InjectedFailure` when ``federation.fail_clients`` lists ``(rnd, client)``."""
    if (rnd, client) in set(map(tuple, cfg.federation.fail_clients)):
        raise InjectedFailure(f"injected failure of client {client} in round {rnd}")


def open_run(cfg: Config, run_dir: Path, *, resume: bool, overwrite: bool) -> RunDir:
    """Give torch ``run.threads`` CPU threads, create (or reopen) the run directory (its
    ``env.json`` records those threads), log to its ``log.txt``, seed torch."""
    set_threads(cfg.run.threads)
    run = RunDir.prepare(cfg, run_dir, resume=resume, overwrite=overwrite)
    setup_logging(cfg.run.log_level, run.log)
    torch.manual_seed(cfg.run.seed)
    log.info("run directory %s", run.path)
    return run


def run_federation(
    cfg: Config,
    run: RunDir,
    algo: Algorithm,
    clients: Clients,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    on_record: RecordHook | None = None,
) -> RunResult:
    """Every round from the first (or the one after the checkpoint) to :func:`last_round`.

    Args:
        cfg: the run's config.
        run: its directory, from :func:`open_run`.
        algo: the algorithm, its server state set up (``setup``).
        clients: how the engine reaches its clients.
        resume: restore ``run``'s checkpoint first and drop log records of later rounds.
        on_round: called with the round number before each round (an exception it raises stops
            the run as a kill would: rounds before it are checkpointed).
        on_record: called with every record written to ``metrics.jsonl`` from now on, after the
            hooks the config names (:func:`~fedamole.rundir.open_hooks`).

    Raises:
        CheckpointError: ``resume`` without a usable checkpoint, or one of another config.
        fedamole.rundir.HookError: a ``run.hooks`` entry does not import, or
            ``run.tensorboard`` is set without TensorBoard installed.
    """
    start = 0 if cfg.eval.test_init else 1
    assignments: dict[int, str] = {}  # round -> assignments/round_NNN.json's text (the ledger's)
    if resume:
        state, assignments = restore(run, cfg, last=last_round(cfg))
        algo.load_state_dict(state["server"])
        clients.load_states(state["clients"])
        start = int(state["round"]) + 1
        if start - 1 not in assignments:  # an older checkpoint: from its server state
            _write_assignment(run, start - 1, algo.assignment_record(), assignments)
        log.info("resumed from the checkpoint of round %d", start - 1)
    else:
        _write_assignment(run, start - 1, algo.assignment_record(), assignments)
    logs = RoundLogs(JsonlLogger(run.metrics), JsonlLogger(run.comm), JsonlLogger(run.predictions))
    try:
        if resume:
            logs.metrics.truncate_after(start - 1, drop=received_too_late(start))
            logs.predictions.truncate_after(start - 1, drop=received_too_late(start))
            logs.comm.truncate_after(start - 1)
        # after the truncation: the TensorBoard mirror is rebuilt from what metrics.jsonl keeps
        logs.hooks = logs.metrics.on_record = open_hooks(cfg, run, on_record) or None
    except BaseException:
        logs.close()
        raise
    failures = 0
    best = BestCheckpoint(cfg, run) if cfg.run.checkpoint else None
    if best is not None and resume:
        best.update(start - 1)  # a kill between saving `last` and promoting it to `best`
    try:
        for rnd in range(start, last_round(cfg) + 1):
            if on_round is not None:
                on_round(rnd)
            try:
                failures += play_round(rnd, cfg, algo, clients, logs)
            except RunFailedError as exc:
                raise RunFailedError(f"{exc} {_after_failure(run)}") from None
            _write_assignment(run, rnd, algo.assignment_record(), assignments)
            if best is not None:
                # `test_global` scores of round rnd-1 just arrived: `last` still holds rnd-1
                best.update(rnd)
                state = {
                    "round": rnd,
                    "config": json.dumps(cfg.to_dict(), sort_keys=True),
                    "server": algo.state_dict(),
                    "clients": clients.states(),
                    LEDGER: _ledger(run, logs, assignments).to_state(),
                }
                save_checkpoint(run.checkpoints, state)
                best.update(rnd)  # `test` scores of round rnd: `last` now holds rnd
    finally:
        logs.close()
    run.mark_done(last_round(cfg))
    result = summarize_run(run.path)
    result.failures = failures
    log.info("%s", format_summary(result))
    return result


def play_round(rnd: int, cfg: Config, algo: Algorithm, clients: Clients, logs: RoundLogs) -> int:
    """One round: configure, reach the clients, log what came back, aggregate.

    Returns:
        The number of clients that failed (raised, or gave no reply in time) this round.
    """
    t0 = time.perf_counter()
    log.info("=== round %d/%d ===", rnd, cfg.federation.rounds)
    messages = algo.configure_round(rnd)
    updates: dict[int, ClientMessage] = {}
    failed = 0
    for client, outcome in clients.run_round(rnd, messages):
        msg = messages[client]
        _log_comm(logs.comm, rnd, client, "down", msg)
        if isinstance(outcome, BaseException):  # a failing client must not stop the federation
            failed += 1
            log.error(
                "round %d: client %d failed: %s: %s", rnd, client, type(outcome).__name__, outcome
            )
            log.debug("traceback", exc_info=outcome)
            continue
        bad = sorted(k for k, v in outcome.metrics.items() if not math.isfinite(v))
        if bad:  # a diverged client: its numbers are not scores
            failed += 1
            log.error("round %d: client %d failed: non-finite %s", rnd, client, ", ".join(bad))
            continue
        updates[client] = outcome
        _log_comm(logs.comm, rnd, client, "up", outcome)
        _log_metrics(logs.metrics, rnd, client, outcome)
        _log_predictions(logs.predictions, rnd, client, outcome)
        log.info("%s", _client_line(client, outcome, msg))
    if messages and not updates:
        raise RunFailedError(
            f"round {rnd}: every client failed ({failed} of {len(messages)}; their errors are in "
            "the log above and in log.txt), so the run stops unfinished."
        )
    summary = algo.aggregate(rnd, updates)
    server = summary.info.get("metrics", {}) if isinstance(summary.info, Mapping) else {}
    for metric, value in sorted(server.items()):  # e.g. FedAMoLE's rsea/... diagnostics
        logs.metrics.log(metric_record(rnd, SERVER_CLIENT, "server", metric, value))
    if server:
        log.info("server  %s", "  ".join(f"{k} {v:.4f}" for k, v in sorted(server.items())))
    for client, reason in summary.rejected.items():
        logs.metrics.log(metric_record(rnd, client, "server", "rejected", 1.0))
        log.warning("round %d: update of client %d rejected: %s", rnd, client, reason)
    seconds = time.perf_counter() - t0
    logs.metrics.log(metric_record(rnd, SERVER_CLIENT, "server", "round_seconds", seconds))
    log.info(
        "round %d done in %.1f s (%d failed, %d rejected)",
        rnd,
        seconds,
        failed,
        len(summary.rejected),
    )
    return failed


def _log_metrics(metrics_log: JsonlLogger, rnd: int, client: int, update: ClientMessage) -> None:
    """One record per metric, in key order; a per-step metric (``train/step_loss@3``,
    :func:`~fedamole.federated.messages.split_step_key`) gets a ``step`` field, its steps in
    numeric order."""
    keyed = [(split_step_key(key), value) for key, value in update.metrics.items()]
    for (name, step), value in sorted(keyed, key=lambda item: (item[0][0], item[0][1] or 0)):
        split, _, metric = name.partition("/")
        split, at = _logged_as(split, rnd)
        metrics_log.log(metric_record(at, client, split, metric, value, step))


def _logged_as(split: str, rnd: int) -> tuple[str, int]:
    """Where a reply's result of round ``rnd`` is logged: the model received this round is the
    global one of round ``rnd - 1``, logged as its ``test_global``; other splits as they are."""
    return ("test_global", rnd - 1) if split == "received" else (split, rnd)


def _log_predictions(log_: JsonlLogger, rnd: int, client: int, update: ClientMessage) -> None:
    """The reply's per-example results, split as :func:`_log_metrics` splits its metrics (the
    received model's as ``test_global`` of round ``rnd - 1``)."""
    for name, results in sorted(unpack_predictions(update.config).items()):
        split, at = _logged_as(name, rnd)
        for record in prediction_records(at, client, split, results):
            log_.log(record)


def _log_comm(
    comm_log: JsonlLogger,
    rnd: int,
    client: int,
    direction: Literal["down", "up"],
    msg: ServerMessage | ClientMessage,
) -> None:
    for kind, nbytes in sorted(msg.nbytes().items()):
        comm_log.log(comm_record(rnd, client, direction, kind, nbytes))


def _client_line(client: int, update: ClientMessage, msg: ServerMessage) -> str:
    shown = ("test/score", "test/accuracy", "test/rouge_l", "eval/loss", "train/loss")
    parts = [f"client {client:>3}"]
    for key in shown:
        if key in update.metrics:
            parts.append(f"{key} {update.metrics[key]:8.4f}")
    parts.append(f"down {msg.total_bytes() / 1e6:7.3f} MB  up {update.total_bytes() / 1e6:7.3f} MB")
    return "  ".join(parts)


def _write_assignment(
    run: RunDir, rnd: int, record: Mapping[str, Any] | None, texts: dict[int, str]
) -> None:
    """Write the assignment after round ``rnd`` and keep its text in ``texts`` (the ledger's)."""
    if record is not None and rnd >= 0:
        texts[rnd] = assignment_text(record)
        run.write_assignment(rnd, texts[rnd])


def _ledger(run: RunDir, logs: RoundLogs, assignments: Mapping[int, str]) -> Ledger:
    """What the run directory's files hold now, for the checkpoint (:mod:`fedamole.rundir.
    ledger`); ``comm.jsonl`` is read back (small: a few records per client and round)."""
    return Ledger(
        metrics=dict(logs.metrics.counts),
        predictions=dict(logs.predictions.counts),
        comm=list(read_jsonl(run.comm)),
        assignments=dict(assignments),
    )


def _after_failure(run: RunDir) -> str:
    """What to do after a round in which every client failed, true to what ``run`` saved."""
    config_cause = (
        "a cause in the config (often a learning rate or Adam betas out of range, or "
        "`model.max_length` shorter than the prompts) needs a new run: fix it and start again "
        "with --overwrite"
    )
    saved = checkpoint_or_none(run.checkpoints, LAST) or checkpoint_or_none(run.checkpoints, BEST)
    if saved is None:
        return f"No round was saved: {config_cause}."
    return (
        f"Round {saved['round']} is saved: a cause outside the config (memory, a file, a "
        f"device) can be removed and the run continued with --resume; {config_cause} (a "
        "resume with the same config fails the same way, one with another config is refused)."
    )


def last_round(cfg: Config) -> int:
    """The last round the engine runs: ``R``, or ``R + 1`` (evaluation only) when the global model
    after the final aggregation must be evaluated (``eval.timing`` = ``global`` or ``both``)."""
    rounds = cfg.federation.rounds
    return rounds + 1 if cfg.eval.timing != "personalized" else rounds
