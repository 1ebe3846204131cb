"""Which client model an export reads: the checkpoint ``--round`` names, and the client's model in
it, as it was after local training or as it received it (see :mod:`fedamole.export`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.lora_common import select_parts
from fedamole.algorithms.lora_strategy import LoRAStrategy
from fedamole.config import Config
from fedamole.export.formats import FEDAMOLE_PREFIXES, exportable_algorithms
from fedamole.rundir import (
    BEST,
    LAST,
    CheckpointError,
    RunDir,
    checkpoint_info,
    checkpoint_rounds,
    client_state,
)

__all__ = [
    "Source",
    "base_model",
    "lora_client_state",
    "pick_checkpoint",
    "quiet_peft",
    "received_lora_state",
]


@dataclass(frozen=True)
class Source:
    """One client's model to export: the checkpoint and how to read it.

    ``view`` is ``"trained"`` (the client state as checkpointed: its model after local training
    in ``round``, or after loading in the evaluation-only round) or ``"received"`` (the model
    it received at the start of round ``round + 1``: ``checkpoints/best`` chosen by
    ``test_global``).
    """

    cfg: Config
    run_dir: Path
    state: dict[str, Any]
    client: int
    round: int
    view: str

    @property
    def model_kind(self) -> str:
        """The manifest's ``model``: ``"trained"`` (after local training in ``round``),
        ``"received"`` (what the server sent: in round ``round + 1``, or in the evaluation-only
        round ``round`` itself) or ``"initial"`` (round 0, before any training)."""
        if self.view == "received" or self.round > self.cfg.federation.rounds:
            return "received"
        return "initial" if self.round == 0 else "trained"

    @cached_property
    def client_state(self) -> dict[str, Any]:
        """The client's private state after ``round``: the checkpoint's on the embedded engine,
        the client's own snapshot of that round on Flower
        (:func:`fedamole.rundir.client_state`)."""
        return client_state(self.run_dir, self.state, self.client)

    @property
    def received_round(self) -> int:
        """The round whose received model this is (for algorithms that keep only the global
        model: FDLoRA, the prompt methods).

        Raises:
            ValueError: the checkpoint holds the model after local training, which they do not
                keep.
        """
        if self.view == "received":
            return self.round + 1
        cfg = self.cfg
        if cfg.eval.timing != "personalized" and self.round == cfg.federation.rounds + 1:
            return self.round  # the evaluation-only round: what the client received in it
        raise ValueError(
            f"a {cfg.federation.algorithm!r} client's model after local training is not kept in "
            f"checkpoints (round {self.round} of this run holds only the global model): export a "
            'run with eval.timing = "global" or "both", with --round best or, after its '
            "evaluation-only round, --round last. Every model of "
            f"{exportable_algorithms(trained=True)} can be exported"
        )


def pick_checkpoint(
    run_dir: Path, cfg: Config, which: str | int
) -> tuple[str, str, dict[str, Any] | None]:
    """``(checkpoint name, view, selection)`` for ``--round which``."""
    folder = RunDir(run_dir).checkpoints
    kept = checkpoint_rounds(folder)
    listing = ", ".join(f"{n} (round {r})" for n, r in kept.items()) or "none"
    if isinstance(which, str) and which.strip().lstrip("-").isdigit():
        which = int(which)
    if isinstance(which, int):
        names = [n for n in (BEST, LAST) if kept.get(n) == which]
        if not names:
            raise ValueError(
                f"round {which} of {run_dir} has no checkpoint: a run keeps only `last` and "
                f"`best`, here {listing}; export one of them (--round best, --round last, or "
                "its round number)"
            )
        name = names[0]
    elif which in (BEST, LAST):
        name = which
        if name == BEST and BEST not in kept:
            raise CheckpointError(
                f"{run_dir} has no checkpoints/best (it keeps {listing}): runs written before "
                "fedamole kept the best round, runs with run.checkpoint = false and runs stopped "
                "before a round was scored have none; export --round last instead"
            )
    else:
        raise ValueError(f"--round must be best, last or a round number, not {which!r}")
    info = checkpoint_info(folder, name) or {}
    selection = info.get("selection")
    view = "received" if selection and selection.get("split") == "test_global" else "trained"
    return name, view, selection


def received_lora_state(source: Source) -> dict[str, Any]:
    """A LoRA client's state after it loaded what the server sent in round ``round + 1``: the
    algorithm's own merge (shared parts from the server, private parts its own).

    When the message replaces the client's whole (single) adapter, as FedIT's after an
    aggregation does, the client's own state plays no part and is not read (on Flower, the
    client's snapshot of ``round`` is not needed)."""
    cfg = source.cfg
    algo = get_algorithm(cfg.federation.algorithm)(cfg)
    if not isinstance(algo, LoRAStrategy):
        raise ValueError(f"{cfg.federation.algorithm!r} has no received LoRA model to export")
    algo.load_state_dict(source.state["server"])
    msg = algo.configure_round(source.round + 1)[source.client]
    shared = select_parts(msg.tensors, algo.shared_parts)
    whole = len(algo.adapters) == 1 and shared.keys() == algo.global_state.keys()
    state = {} if whole else dict(source.client_state)
    # ``_receive`` reads only the message and ``ctx.state`` (the model only to draw a local-only
    # client's first adapter, which a checkpointed client already holds)
    ctx = ClientContext(source.client, None, None, None, state)  # type: ignore[arg-type]
    algo._receive(msg, ctx)
    return ctx.state


def lora_client_state(source: Source) -> dict[str, Any]:
    """A LoRA client's state as the source's ``view`` has it: as checkpointed, or received."""
    return received_lora_state(source) if source.view == "received" else source.client_state


def base_model(cfg: Config) -> str:
    """The backbone to record: a local folder made absolute (a relative one resolves against
    the directory the run was started from), hub ids and fedamole names as they are."""
    name = cfg.model.name
    if name.startswith(FEDAMOLE_PREFIXES):
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Without the FutureWarning transformers raises on peft's gradient-checkpointing probe
    (``is_gradient_checkpointing``), which says nothing to a user exporting a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        yield
