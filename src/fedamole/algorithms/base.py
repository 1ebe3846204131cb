"""The protocol every federated algorithm implements (DESIGN.md section 4).

The server side (``setup``, ``configure_round``, ``aggregate``, ``state_dict``) keeps only server
state. ``local_update`` runs where the data is: it may use only the message, that client's
:class:`ClientContext` (its data, the shared backbone, and a private ``state`` dict that the engine
persists and checkpoints) and the config. Nothing else: that is what lets the Flower engine run the
same objects as the embedded one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.config import Config
from fedamole.data.collate import Encoded, encode_train
from fedamole.data.types import ClientData
from fedamole.evaluation import evaluate_examples, mean_loss
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = ["Algorithm", "ClientContext", "RoundSummary", "client_seed", "train_examples"]

log = logging.getLogger(__name__)


@dataclass
class ClientContext:
    """Everything a client may use in ``local_update``.

    Attributes:
        client_id: 0-based client index.
        data: this client's splits only.
        model: the (shared) backbone, already prepared by :meth:`Algorithm.prepare_model`.
        tokenizer: the backbone's tokenizer.
        state: client-private persistent state (tensors and plain values), saved in checkpoints
            and, on Flower, in ``context.state``.
        cache: per-process scratch (encoded examples); never checkpointed, rebuilt on demand.
    """

    client_id: int
    data: ClientData
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    state: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class RoundSummary:
    """What the server did with a round's updates."""

    round: int
    accepted: tuple[int, ...]
    rejected: Mapping[int, str] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)


class Algorithm(Protocol):
    """A federated algorithm: one object per process, server state only."""

    cfg: Config

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        """Install the algorithm's adapters on a freshly loaded backbone (once per process) and
        return the model clients use (the same object, or a wrapper such as a peft model)."""

    def setup(self, model: PreTrainedModel) -> None:
        """Create the server state (initial global weights) from a prepared model."""

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        """One message per client for round ``rnd`` (0 = evaluate the initial model)."""

    def local_update(self, rnd: int, msg: ServerMessage, ctx: ClientContext) -> ClientMessage:
        """Client work for one round: load, train, evaluate, compute statistics, reply."""

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        """Fold the round's (valid) updates into the server state."""

    def assignment_record(self) -> dict[str, Any] | None:
        """JSON-able description of the current architecture per client, or ``None``."""

    def state_dict(self) -> dict[str, Any]:
        """Server state for checkpoints (tensors and plain values)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def client_seed(seed: int, rnd: int, client: int) -> int:
    """A deterministic per-(round, client) seed: dropout and sampling restart from it every round,
    so an uninterrupted run, a resumed run and the Flower engine draw the same randomness."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rnd, client]).generate_state(1)[0])


def train_examples(ctx: ClientContext, cfg: Config) -> list[Encoded]:
    """The client's encoded training examples (cached per process; too-long prompts dropped)."""
    if "train_encoded" not in ctx.cache:
        encoded = [encode_train(x, ctx.tokenizer, cfg.model.max_length) for x in ctx.data.train]
        kept = [e for e in encoded if e is not None]
        if len(kept) < len(encoded):
            log.warning(
                "client %d: dropped %d training examples whose prompt is >= model.max_length (%d)",
                ctx.client_id,
                len(encoded) - len(kept),
                cfg.model.max_length,
            )
        ctx.cache["train_encoded"] = kept
    return ctx.cache["train_encoded"]


def evaluate_test(ctx: ClientContext, cfg: Config) -> dict[str, float]:
    """Test-split metrics of the model as loaded (``evaluate_examples``); ``{}`` without a test
    split. Keys are bare (``score``, ``accuracy``, ...): callers prefix ``test/`` or
    ``received/``."""
    if not ctx.data.test:
        return {}
    scores = evaluate_examples(
        ctx.model, ctx.tokenizer, ctx.data.test, cfg.eval, max_length=cfg.model.max_length
    )
    return {k: float(v) for k, v in scores.items()}


def eval_loss(ctx: ClientContext, cfg: Config) -> float:
    """Token-weighted response NLL of the model as loaded on the eval split (logged only)."""
    return mean_loss(
        ctx.model,
        ctx.tokenizer,
        ctx.data.eval,
        batch_size=cfg.eval.batch_size,
        max_length=cfg.model.max_length,
    )
