"""The embedded engine: THE round loop, every client in one process on one shared frozen backbone.

Timing (docs/algorithm.md#rounds): round 0 evaluates the initial model (``eval.test_init``); in
every round ``1..R`` each client loads its experts (swapped into the shared backbone in place),
trains, is evaluated right after training (in the rounds ``eval.every`` selects), and uploads;
the server then aggregates and re-assigns (the algorithm decides what happens after the last
round: FedAMoLE aggregates nothing there).

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

The loop itself, the logs and the checkpoints live in :mod:`fedamole.engines.common`, shared with
the Flower engine; this module supplies what is embedded: one backbone, every client's
:class:`ClientContext`, and ``local_update`` called in this process (:class:`LocalClients`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fedamole.algorithms.base import Algorithm, ClientContext
from fedamole.algorithms.runtime import build_runtime
from fedamole.config import Config, ConfigError
from fedamole.data import load_federated_data
from fedamole.engines.common import (
    InjectedFailure,
    Outcome,
    RoundCallback,
    check_injected_failure,
    last_round,
    open_run,
    run_federation,
)
from fedamole.engines.summary import RunResult, format_summary, summarize_run
from fedamole.federated.messages import ServerMessage
from fedamole.rundir import RecordHook

__all__ = [
    "InjectedFailure",
    "LocalClients",
    "RunResult",
    "format_summary",
    "last_round",
    "run_embedded",
    "summarize_run",
]

log = logging.getLogger("fedamole")


def run_embedded(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_round: RoundCallback | None = None,
    on_record: RecordHook | None = None,
) -> RunResult:
    """Run (or resume) one experiment in this process; see the module docstring.

    Args:
        on_round: called with each round's number before it runs (see
            :func:`~fedamole.engines.common.run_federation`).
        on_record: called with every record written to ``metrics.jsonl`` (ditto).
    """
    if cfg.flower.secagg != "none":
        raise ConfigError(
            [
                f"`flower.secagg` = {cfg.flower.secagg!r} needs the Flower engine: the embedded "
                "engine runs every client in this process, where no secure sum can hide one "
                'client\'s update; run with `--engine flower`, or set `flower.secagg = "none"`'
            ]
        )
    run = open_run(cfg, run_dir, resume=resume, overwrite=overwrite)
    try:
        runtime = build_runtime(cfg)
        data = load_federated_data(cfg)
        runtime.algo.observe_partition(data.client_categories())
        runtime.algo.setup(runtime.model)
        contexts = [
            ClientContext(c, data.clients[c], runtime.model, runtime.tokenizer)
            for c in range(cfg.federation.num_clients)
        ]
        clients = LocalClients(cfg, runtime.algo, contexts, progress=progress)
        return run_federation(
            cfg,
            run,
            runtime.algo,
            clients,
            resume=resume,
            on_round=on_round,
            on_record=on_record,
        )
    finally:
        run.release()


class LocalClients:
    """Every client in this process, on one shared backbone (adapters swapped in place)."""

    def __init__(
        self, cfg: Config, algo: Algorithm, contexts: list[ClientContext], *, progress: bool = True
    ):
        self.cfg, self.algo, self.contexts, self.progress = cfg, algo, contexts, progress

    def run_round(
        self, rnd: int, messages: Mapping[int, ServerMessage]
    ) -> Iterator[tuple[int, Outcome]]:
        for ctx in self.contexts:
            steps = self.cfg.train.steps
            ctx.progress = _progress_bar(ctx.client_id, steps) if self.progress else None
            ctx.phase = _phase_bar(ctx.client_id) if self.progress else None
            try:
                check_injected_failure(self.cfg, rnd, ctx.client_id)
                outcome: Outcome = self.algo.local_update(rnd, messages[ctx.client_id], ctx)
            except Exception as exc:  # a crashing client must not stop the federation
                outcome = exc
            yield ctx.client_id, outcome

    def states(self) -> dict[int, dict[str, Any]]:
        return {ctx.client_id: ctx.state for ctx in self.contexts}

    def load_states(self, states: Mapping[int, Mapping[str, Any]]) -> None:
        for ctx in self.contexts:
            ctx.state = dict(states.get(ctx.client_id, {}))


def _bar(client: int, label: str, **kwargs: Any) -> tqdm:
    """A client's transient bar on a terminal's stderr (nothing when stderr is not a terminal, so
    never in ``log.txt`` or a redirected log)."""
    return tqdm(
        desc=f"client {client} {label}", leave=False, file=sys.stderr, disable=None, **kwargs
    )


def _phase_bar(client: int):
    """``phase(label, total)`` for :class:`ClientContext`: a :func:`_bar` of ``total`` examples."""

    @contextlib.contextmanager
    def phase(label: str, total: int) -> Iterator[Callable[[int], None]]:
        with _bar(client, label, total=total, unit="ex") as bar:
            yield bar.update

    return phase


def _progress_bar(client: int, steps: int):
    """The local step iterator's wrapper for :class:`ClientContext`: a :func:`_bar` of steps."""

    def wrap(it: Iterator[int]) -> Iterator[int]:
        return iter(_bar(client, "train", iterable=it, total=steps))

    return wrap
