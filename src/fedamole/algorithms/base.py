"""The protocol every federated algorithm implements (docs/algorithm.md#engines).

The server side (``setup``, ``configure_round``, ``aggregate``, ``state_dict``) keeps only server
state. ``local_update`` runs where the data is: it may use only the message, that client's
:class:`ClientContext` (its data, the shared backbone, and a private ``state`` dict that the engine
persists and checkpoints) and the config. Nothing else: that is what lets the Flower engine run the
same objects as the embedded one.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.config import Config
from fedamole.data.collate import Encoded, encode_train
from fedamole.data.types import ClientData
from fedamole.evaluation import evaluate_examples, mean_loss
from fedamole.federated.messages import (
    PREDICTIONS,
    ClientMessage,
    ServerMessage,
    pack_predictions,
)
from fedamole.training import BatchStream, round_lr

__all__ = [
    "Algorithm",
    "ClientContext",
    "ClientJob",
    "RoundPlan",
    "RoundSummary",
    "RoundTemplate",
    "client_round",
    "client_seed",
    "client_stream",
    "evaluated_round",
    "personalized_metrics",
    "phase_progress",
    "prefixed",
    "screen_updates",
    "train_examples",
]

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
        progress: the engine's wrapper of the local step iterator (a progress bar), or ``None``.
        phase: the engine's progress display of another phase (evaluation, statistics), or
            ``None``: ``phase(label, total)`` is a context manager yielding ``advance(n)``, to be
            called as ``n`` of the ``total`` items are done (see :func:`phase_progress`).
        predictions: while :func:`client_round` runs an evaluation, the list its test-split
            evaluation appends one record per example to (:func:`evaluate_test`); else ``None``.
    """

    client_id: int
    data: ClientData
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    state: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None
    phase: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] | None = None
    predictions: list[dict[str, Any]] | None = None

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
    """A federated algorithm: one object per process, server state only.

    Every member is declared here; the optional ones have a default in :class:`RoundTemplate`,
    which every algorithm of this package extends. What the rest of fedamole knows about an
    algorithm without importing it (its name, report label, export) is its registration
    (:mod:`fedamole.algorithms.registry`).

    Attributes:
        cfg: the run's configuration.
        observes_partition: whether :meth:`observe_partition` uses the partition (the Flower
            server loads the data only for such an algorithm); default ``False``.
    """

    cfg: Config
    observes_partition: ClassVar[bool]

    def observe_partition(self, categories: list[frozenset[str]]) -> None:
        """Each client's categories in the partition, from the engine, where it knows them;
        called before :meth:`setup`. Default: ignored."""

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


@dataclass(frozen=True)
class RoundPlan:
    """What a client does in one round; it travels as the ``config`` of the server's message.

    Attributes:
        train: train locally (rounds ``1..R``).
        upload: send the update back.
        lr: this round's learning rate (:func:`~fedamole.training.round_lr`).
        eval_personalized: evaluate after local training (round 0: the initial model).
        eval_received: evaluate the received global model before training.
        stats: FedAMoLE only: compute and send the RSEA embeddings.
        sync: FDLoRA only: copy the trained adapter into the private one.
        load_mlp: FedPTuning's reference quirk only: load the relayed prompt MLP.
        upload_mlp: FedPTuning's reference quirk only: send this client's prompt MLP.
    """

    train: bool
    upload: bool
    lr: float
    eval_personalized: bool
    eval_received: bool = False
    stats: bool = False
    sync: bool = False
    load_mlp: bool = False
    upload_mlp: bool = False

    @classmethod
    def for_round(cls, cfg: Config, rnd: int) -> RoundPlan:
        """The plan every algorithm starts from (``eval.timing``, ``eval.every``).

        ``train``/``upload``: rounds ``1..R``; ``eval_personalized``: after training (or on the
        initial model in round 0) in an :func:`evaluated_round` unless ``eval.timing =
        "global"``, never in the evaluation-only round ``R+1``; ``eval_received``: before
        training unless ``eval.timing = "personalized"``, when the received model (the global
        model of round ``rnd - 1``, logged as ``test_global`` of that round) is of an evaluated
        round (round 1's is the initial one: evaluated only with ``eval.test_init``; round
        ``R+1``'s is round ``R``'s, always evaluated).
        """
        rounds, timing = cfg.federation.rounds, cfg.eval.timing
        train = 1 <= rnd <= rounds
        received = timing != "personalized" and rnd >= 1 and evaluated_round(cfg, rnd - 1)
        return cls(
            train=train,
            upload=train,
            lr=round_lr(cfg.train.lr, cfg.train.lr_decay, rnd),
            eval_personalized=timing != "global" and evaluated_round(cfg, rnd),
            eval_received=received,
        )

    @property
    def active(self) -> bool:
        """Whether the client uses the model at all this round (else nothing need be sent)."""
        return self.train or self.eval_received or self.eval_personalized

    def to_config(self) -> dict[str, bool | float]:
        """The message ``config`` (plain scalars, so it crosses Flower's records)."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoundPlan:
        """Read a plan back from a message ``config`` (extra keys are ignored)."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


def evaluated_round(cfg: Config, rnd: int) -> bool:
    """Whether the models of round ``rnd`` are tested (``eval.every = k``;
    docs/algorithm.md#evaluation-timing).

    Round 0 (the initial model) with ``eval.test_init``; of the training rounds ``1..R``, every
    ``k``-th (``k, 2k, ...``) and the last, ``R``; with ``k = 1`` every round. Whatever
    ``eval.timing`` names is tested in these rounds: the personalized model after training in
    round ``rnd``, and the global model after round ``rnd``'s aggregation (evaluated by the
    clients as they receive it, in round ``rnd + 1``).
    """
    rounds = cfg.federation.rounds
    if rnd == 0:
        return cfg.eval.test_init
    return 1 <= rnd <= rounds and (rnd % cfg.eval.every == 0 or rnd == rounds)


@dataclass(frozen=True)
class ClientJob:
    """One client's round as the template hands it to the hooks."""

    rnd: int
    msg: ServerMessage
    plan: RoundPlan


class RoundTemplate(ABC):
    """The client side of a round, written once (:func:`client_round`), with small hooks.

    An algorithm inherits :meth:`local_update` and implements :meth:`load`, :meth:`train_round`
    and :meth:`upload`; it overrides :meth:`evaluate_personalized` and
    :meth:`evaluate_received` only when its evaluation differs from the plain test split.
    """

    cfg: Config
    observes_partition: ClassVar[bool] = False

    def observe_partition(self, categories: list[frozenset[str]]) -> None:
        """Ignore the partition (:meth:`Algorithm.observe_partition`)."""
        return None  # a default, not a hook to implement

    def local_update(self, rnd: int, msg: ServerMessage, ctx: ClientContext) -> ClientMessage:
        """Client work for one round (see :func:`client_round`)."""
        return client_round(self, rnd, msg, ctx)

    @abstractmethod
    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        """Merge what arrived into ``ctx.state`` and load the client's model."""

    @abstractmethod
    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        """Train locally (torch is already seeded) and keep the result in ``ctx.state``."""

    @abstractmethod
    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        """The tensors to send back (called every round; ``job.plan.upload`` says if any)."""

    def evaluate_received(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        """Metrics of the received global model (keys ``received/...``).

        Raises:
            RuntimeError: the algorithm has no global model (config validation keeps
                ``eval.timing`` at ``"personalized"`` for it, so a plan never asks).
        """
        raise RuntimeError(
            f"{type(self).__name__} has no global model to evaluate: use eval.timing=personalized"
        )

    def evaluate_personalized(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        """Metrics of the client's model after training (keys ``test/...``, ``eval/loss``)."""
        return personalized_metrics(ctx, self.cfg)


def client_round(
    algo: RoundTemplate, rnd: int, msg: ServerMessage, ctx: ClientContext
) -> ClientMessage:
    """Load; evaluate the received model; train; pack the upload; evaluate the trained model.

    The upload is packed before the personalized evaluation, which may load another model
    (FDLoRA's fused adapter). Dropout restarts from ``client_seed(run.seed, rnd, client)``.
    """
    plan = RoundPlan.from_config(msg.config)
    job = ClientJob(rnd, msg, plan)
    algo.load(ctx, job)
    metrics: dict[str, float] = {}
    predictions: dict[str, list[dict[str, Any]]] = {}
    if plan.eval_received:
        with _collecting(ctx, predictions, "received"):
            metrics.update(algo.evaluate_received(ctx, job))
    if plan.train:
        torch.manual_seed(client_seed(algo.cfg.run.seed, rnd, ctx.client_id))
        metrics.update(algo.train_round(ctx, job))
    tensors = algo.upload(ctx, job)
    if plan.eval_personalized:
        with _collecting(ctx, predictions, "test"):
            metrics.update(algo.evaluate_personalized(ctx, job))
    config: dict[str, Any] = {"num_examples": len(ctx.data.train)}
    if predictions:
        config[PREDICTIONS] = pack_predictions(predictions)
    return ClientMessage(rnd, ctx.client_id, tensors, config, metrics)


@contextlib.contextmanager
def _collecting(
    ctx: ClientContext, into: dict[str, list[dict[str, Any]]], split: str
) -> Iterator[None]:
    """Collect the per-example records of the test evaluation inside the block as
    ``into[split]`` (left out when the block evaluated no test example)."""
    ctx.predictions = []
    try:
        yield
        if ctx.predictions:
            into[split] = ctx.predictions
    finally:
        ctx.predictions = None


def screen_updates(
    rnd: int,
    updates: Mapping[int, ClientMessage],
    problems: Callable[[int, ClientMessage], list[str]],
    *,
    weighted: bool,
) -> tuple[dict[int, ClientMessage], dict[int, str]]:
    """Split a round's updates into accepted ones and rejected ones (with the logged reason).

    Args:
        rnd: the round (for the log).
        updates: client -> reply.
        problems: the algorithm's check of one reply (wrong keys, shapes, non-finite values).
        weighted: ``federation.weighting = "examples"``: a reply that carries tensors must also
            carry a positive ``num_examples``.
    """
    accepted, rejected = {}, {}
    for client, msg in sorted(updates.items()):
        found = problems(client, msg)
        count = msg.config.get("num_examples")
        if weighted and msg.tensors and not (isinstance(count, int) and count > 0):
            found.append(f"num_examples = {count!r}: weighting by examples needs a count > 0")
        if found:
            rejected[client] = "; ".join(found)
            log.warning("round %d: rejected client %d: %s", rnd, client, rejected[client])
        else:
            accepted[client] = msg
    return accepted, rejected


def client_stream(ctx: ClientContext, cfg: Config) -> BatchStream:
    """The client's training batch stream, at the position its state recorded (see
    :class:`~fedamole.training.BatchStream`); store ``stream.state_dict()`` under
    ``ctx.state["stream"]`` after training."""
    stream = BatchStream(train_examples(ctx, cfg), seed=cfg.run.seed, client=ctx.client_id)
    if "stream" in ctx.state:
        stream.load_state_dict(ctx.state["stream"])
    return stream


def prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """``{"<prefix>/<key>": value}``."""
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def personalized_metrics(ctx: ClientContext, cfg: Config) -> dict[str, float]:
    """``test/...`` metrics of the model as loaded, and ``eval/loss`` when there is an eval
    split."""
    out = prefixed("test", evaluate_test(ctx, cfg))
    if ctx.data.eval:
        out["eval/loss"] = eval_loss(ctx, cfg)
    return out


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


def phase_progress(
    ctx: ClientContext, label: str, total: int
) -> AbstractContextManager[Callable[[int], None]]:
    """The engine's progress display of a phase of ``total`` items (``ctx.phase``), or one that
    shows nothing; a context manager yielding ``advance(n)``."""
    if ctx.phase is None:
        return contextlib.nullcontext(lambda n: None)
    return ctx.phase(label, total)


def evaluate_test(ctx: ClientContext, cfg: Config) -> dict[str, float]:
    """Test-split metrics of the model as loaded (``evaluate_examples``); ``{}`` without a test
    split. Keys are bare (``score``, ``accuracy``, ...): callers prefix ``test/`` or
    ``received/``."""
    if not ctx.data.test:
        return {}
    with phase_progress(ctx, "test", len(ctx.data.test)) as advance:
        scores = evaluate_examples(
            ctx.model,
            ctx.tokenizer,
            ctx.data.test,
            cfg.eval,
            max_length=cfg.model.max_length,
            progress=advance,
            per_example=ctx.predictions,
        )
    return {k: float(v) for k, v in scores.items()}


def eval_loss(ctx: ClientContext, cfg: Config) -> float:
    """Token-weighted response NLL of the model as loaded on the eval split (logged only)."""
    with phase_progress(ctx, "eval", len(ctx.data.eval)) as advance:
        return mean_loss(
            ctx.model,
            ctx.tokenizer,
            ctx.data.eval,
            batch_size=cfg.eval.batch_size,
            max_length=cfg.model.max_length,
            progress=advance,
        )
