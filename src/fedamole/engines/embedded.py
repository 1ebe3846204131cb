"""The embedded engine: THE round loop, every client in one process on one shared frozen backbone.

Timing (SPEC.md section 1): round 0 evaluates the initial model (``eval.test_init``); in every round
``1..R`` each client loads its experts (swapped into the shared backbone in place), trains, is
evaluated right after training, and uploads; the server then aggregates and re-assigns (the
algorithm decides what happens after the last round: FedAMoLE aggregates nothing there).

Global evaluation (``eval.timing`` = ``global`` or ``both``, for the baselines' plain variants): a
client reports metrics of the model it *received* in round ``r`` under the key prefix ``received/``;
that model is the global model after round ``r-1``'s aggregation, so the engine logs them as split
``test_global`` of round ``r-1``. An extra evaluation-only round ``R+1`` covers the last one.

After every round the engine appends to ``metrics.jsonl`` and ``comm.jsonl``, writes
``assignments/round_NNN.json`` and an atomic checkpoint (server state, every client's private
state). ``resume=True`` restores the last checkpoint, drops log records of later rounds, and
continues: the result equals an uninterrupted run because all randomness is derived from
``(seed, round, client)``.

A client that raises is logged and left out of that round (``federation.fail_clients`` injects such
failures for tests); the run goes on.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.base import ClientContext
from fedamole.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedamole.config import Config
from fedamole.data import load_federated_data
from fedamole.federated.messages import ClientMessage, ServerMessage
from fedamole.models import load_model_and_tokenizer
from fedamole.tracking import JsonlLogger, RunDir, read_jsonl, setup_logging

__all__ = ["RunResult", "run_embedded"]

log = logging.getLogger("fedamole")


class InjectedFailure(RuntimeError):
    """A client failure requested by ``federation.fail_clients``."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    rounds: int
    first: dict[int, dict[str, float]] = field(
        default_factory=dict
    )  # client -> metrics, first round
    last: dict[int, dict[str, float]] = field(default_factory=dict)  # client -> metrics, last round
    bytes_up: int = 0
    bytes_down: int = 0
    failures: int = 0
    experts: dict[int, list[int]] = field(default_factory=dict)  # client -> experts held per module


def run_embedded(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) one experiment in this process; see the module docstring."""
    run = RunDir.prepare(cfg, run_dir, resume=resume, overwrite=overwrite)
    setup_logging(cfg.run.log_level, run.log)
    torch.manual_seed(cfg.run.seed)
    log.info("run directory %s", run.path)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device, seed=cfg.run.seed
    )
    data = load_federated_data(cfg)
    algo = get_algorithm(cfg.federation.algorithm)(cfg)
    model = algo.prepare_model(model)
    algo.setup(model)
    contexts = [
        ClientContext(c, data.clients[c], model, tokenizer)
        for c in range(cfg.federation.num_clients)
    ]
    start = 0 if cfg.eval.test_init else 1
    if resume:
        start = _restore(run, cfg, algo, contexts)
    else:
        _write_assignment(run, start - 1, algo.assignment_record())
    metrics_log, comm_log = JsonlLogger(run.metrics), JsonlLogger(run.comm)
    if resume:
        metrics_log.truncate_after(start - 1)
        comm_log.truncate_after(start - 1)
    failures = 0
    try:
        for rnd in range(start, last_round(cfg) + 1):
            failures += _round(rnd, cfg, algo, contexts, metrics_log, comm_log, progress)
            _write_assignment(run, rnd, algo.assignment_record())
            if cfg.run.checkpoint:
                state = {
                    "round": rnd,
                    "config": json.dumps(cfg.to_dict(), sort_keys=True),
                    "server": algo.state_dict(),
                    "clients": {c.client_id: c.state for c in contexts},
                }
                save_checkpoint(run.checkpoints, state)
    finally:
        metrics_log.close()
        comm_log.close()
    result = summarize_run(run.path)
    result.failures = failures
    log.info("%s", format_summary(result))
    return result


def _round(
    rnd: int,
    cfg: Config,
    algo: Any,
    contexts: list[ClientContext],
    metrics_log: JsonlLogger,
    comm_log: JsonlLogger,
    progress: bool,
) -> int:
    t0 = time.perf_counter()
    log.info("=== round %d/%d ===", rnd, cfg.federation.rounds)
    messages = algo.configure_round(rnd)
    updates: dict[int, ClientMessage] = {}
    failed = 0
    for ctx in contexts:
        msg = messages[ctx.client_id]
        _log_comm(comm_log, rnd, ctx.client_id, "down", msg)
        ctx.cache["progress"] = _progress_bar(ctx.client_id, cfg.train.steps) if progress else None
        try:
            if (rnd, ctx.client_id) in set(map(tuple, cfg.federation.fail_clients)):
                raise InjectedFailure(f"injected failure of client {ctx.client_id} in round {rnd}")
            update = algo.local_update(rnd, msg, ctx)
        except Exception as exc:  # a crashing client must not stop the federation
            failed += 1
            log.error(
                "round %d: client %d failed: %s: %s", rnd, ctx.client_id, type(exc).__name__, exc
            )
            log.debug("traceback", exc_info=True)
            continue
        updates[ctx.client_id] = update
        _log_comm(comm_log, rnd, ctx.client_id, "up", update)
        for key, value in sorted(update.metrics.items()):
            split, _, metric = key.partition("/")
            at = rnd
            if split == "received":  # the model received this round = the global one of rnd-1
                split, at = "test_global", rnd - 1
            metrics_log.log(
                {
                    "round": at,
                    "client": ctx.client_id,
                    "split": split,
                    "metric": metric,
                    "value": value,
                }
            )
        log.info("%s", _client_line(ctx.client_id, update, msg))
    summary = algo.aggregate(rnd, updates)
    for client, reason in summary.rejected.items():
        metrics_log.log(
            {"round": rnd, "client": client, "split": "server", "metric": "rejected", "value": 1.0}
        )
        log.warning("round %d: update of client %d rejected: %s", rnd, client, reason)
    log.info(
        "round %d done in %.1f s (%d failed, %d rejected)",
        rnd,
        time.perf_counter() - t0,
        failed,
        len(summary.rejected),
    )
    return failed


def _progress_bar(client: int, steps: int):
    def wrap(it: Iterator[int]) -> Iterator[int]:
        return iter(
            tqdm(
                it, total=steps, desc=f"client {client}", leave=False, file=sys.stderr, disable=None
            )
        )

    return wrap


def _log_comm(
    comm_log: JsonlLogger, rnd: int, client: int, direction: str, msg: ServerMessage | ClientMessage
) -> None:
    for kind, nbytes in sorted(msg.nbytes().items()):
        comm_log.log(
            {"round": rnd, "client": client, "direction": direction, "kind": kind, "bytes": nbytes}
        )


def _client_line(client: int, update: ClientMessage, msg: ServerMessage) -> str:
    shown = ("test/score", "test/accuracy", "test/rouge_l", "eval/loss", "train/loss")
    parts = [f"client {client:>3}"]
    for key in shown:
        if key in update.metrics:
            parts.append(f"{key} {update.metrics[key]:8.4f}")
    parts.append(f"down {msg.total_bytes() / 1e6:7.3f} MB  up {update.total_bytes() / 1e6:7.3f} MB")
    return "  ".join(parts)


def _write_assignment(run: RunDir, rnd: int, record: Mapping[str, Any] | None) -> None:
    if record is None or rnd < 0:
        return
    path = run.assignments / f"round_{rnd:03d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _restore(run: RunDir, cfg: Config, algo: Any, contexts: list[ClientContext]) -> int:
    state = load_checkpoint(run.checkpoints)
    saved = json.loads(state["config"])
    if saved != cfg.to_dict():
        diff = sorted(
            f"{section}.{key}"
            for section in set(saved) | set(cfg.to_dict())
            for key in set(saved.get(section, {})) | set(cfg.to_dict().get(section, {}))
            if saved.get(section, {}).get(key) != cfg.to_dict().get(section, {}).get(key)
        )
        raise CheckpointError(
            f"the checkpoint in {run.checkpoints} was written with another configuration "
            f"(differs in {', '.join(diff)}); resume with the run's own config.toml"
        )
    algo.load_state_dict(state["server"])
    clients = state["clients"]
    for ctx in contexts:
        ctx.state = dict(clients.get(ctx.client_id, {}))
    log.info("resumed from the checkpoint of round %d", state["round"])
    return int(state["round"]) + 1


def last_round(cfg: Config) -> int:
    """The last round the engine runs: ``R``, or ``R + 1`` (evaluation only) when the global model
    after the final aggregation must be evaluated (``eval.timing`` = ``global`` or ``both``)."""
    rounds = cfg.federation.rounds
    return rounds + 1 if cfg.eval.timing != "personalized" else rounds


def summarize_run(run_dir: Path) -> RunResult:
    """First/last-round test metrics per client and total bytes, from a run directory's logs."""
    run = RunDir(run_dir)
    by_round: dict[int, dict[int, dict[str, float]]] = {}
    records = list(read_jsonl(run.metrics))
    primary = "test" if any(r["split"] == "test" for r in records) else "test_global"
    for rec in records:
        if rec["split"] == primary:
            by_round.setdefault(rec["round"], {}).setdefault(rec["client"], {})[rec["metric"]] = (
                rec["value"]
            )
    up = down = 0
    for rec in read_jsonl(run.comm):
        if rec["direction"] == "up":
            up += rec["bytes"]
        else:
            down += rec["bytes"]
    rounds = sorted(by_round)
    result = RunResult(run_dir, rounds[-1] if rounds else -1, bytes_up=up, bytes_down=down)
    if rounds:
        result.first, result.last = by_round[rounds[0]], by_round[rounds[-1]]
    assignments = sorted(run.assignments.glob("round_*.json")) if run.assignments.is_dir() else []
    if assignments:
        modules = json.loads(assignments[-1].read_text())["modules"]
        for per_client in modules.values():
            for client, ids in enumerate(per_client):
                result.experts.setdefault(client, []).append(len(ids))
    return result


def format_summary(result: RunResult) -> str:
    """A readable end-of-run summary: per-client first vs last score, bytes, the run's path."""
    lines = ["", "summary: test score per client (first round -> last round)"]
    for client in sorted(result.last):
        first = result.first.get(client, {}).get("score", float("nan"))
        last = result.last[client].get("score", float("nan"))
        lines.append(f"  client {client:>3}: {first:.4f} -> {last:.4f} ({last - first:+.4f})")
    if result.last:
        mean_first = _mean(r.get("score") for r in result.first.values())
        mean_last = _mean(r.get("score") for r in result.last.values())
        lines.append(
            f"  mean      : {mean_first:.4f} -> {mean_last:.4f} ({mean_last - mean_first:+.4f})"
        )
    if result.experts:
        lines.append("domain experts held per module in the last assignment (mean, min-max):")
        for client, counts in sorted(result.experts.items()):
            mean = sum(counts) / len(counts)
            lines.append(f"  client {client:>3}: {mean:4.1f} ({min(counts)}-{max(counts)})")
    lines.append(
        f"communication: {result.bytes_down / 1e6:.2f} MB down, {result.bytes_up / 1e6:.2f} MB up"
    )
    lines.append(f"run directory: {result.run_dir}")
    return "\n".join(lines)


def _mean(values: Iterator[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")
