"""The round logic shared by the LoRA baselines: one small strategy class, configured by flags.

:class:`LoRAStrategy` implements the :class:`~fedamole.algorithms.base.Algorithm` protocol for "one
federated LoRA adapter, some halves shared": an algorithm names which halves (``lora_A``,
``lora_B``) travel and are averaged (``shared_parts``) and which are trained
(``trained_parts``); FedDPA adds a second, private adapter and overrides training and evaluation.

**Protocol** (docs/algorithm.md#baselines):

- *Init.* The server draws one adapter from ``run.seed`` (:func:`~.lora_common.initial_lora_state`)
  and broadcasts all of it (A and B) in the first round it configures, so every client starts from
  the same weights. Afterwards it sends only the shared parts, and only when they changed (after an
  aggregation). Unshared parts live in the client's ``ctx.state`` and never travel again.
  Local-only broadcasts nothing: its clients draw the same init from the same seed themselves.
- *Client round* (the template :func:`~fedamole.algorithms.base.client_round`): merge what arrived
  into the client's state and load it; optionally evaluate this received model (metrics
  ``received/...``, which the engine logs as split ``test_global`` of the previous round); train
  (rounds ``1..R``); evaluate the trained model (``test/...``, ``eval/loss``); upload the shared
  parts (rounds ``1..R``).
- *Server* (:meth:`LoRAStrategy.aggregate`): reject updates that fail
  :func:`~fedamole.federated.aggregation.check_update` (wrong keys or shapes, NaN/Inf) with a
  logged reason; average the shared parts over the accepted clients, unweighted (the reference)
  or weighted by training-set size (``federation.weighting = "examples"``). Aggregation happens
  after **every** training round including the last, so the final global model exists (FedAMoLE
  aggregates nothing after round R).

**Evaluation timing** (``eval.timing``, :meth:`~fedamole.algorithms.base.RoundPlan.for_round`):
``personalized`` evaluates after local training (the reference's "-FT" numbers; round 0 evaluates
the initial model when ``eval.test_init``); ``global`` evaluates the received global model before
training, which the engine completes with an evaluation-only round ``R+1`` (no training, no upload)
for the model after the last aggregation; ``both`` does both, as the reference's ``--do_ft``.
``eval.every = k`` tests only every k-th round and the last
(:func:`~fedamole.algorithms.base.evaluated_round`), whichever model the timing names.

Randomness: dropout is seeded with ``client_seed(run.seed, round, client)`` before training; the
training order persists across rounds (:class:`~fedamole.training.BatchStream`, its position kept
in ``ctx.state["stream"]``). Client state: ``{"lora": {key: tensor}, "stream": {...}}`` plus
``"lora_<name>"`` per private adapter (:func:`state_key`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
    RoundSummary,
    RoundTemplate,
    client_stream,
    eval_loss,
    evaluate_test,
    prefixed,
    screen_updates,
)
from fedamole.algorithms.lora_common import (
    DEFAULT_ADAPTER,
    PARTS,
    initial_lora_state,
    install_lora,
    lora_parameters,
    lora_state,
    select_parts,
    set_lora_state,
    trainable,
)
from fedamole.config import Config
from fedamole.federated.aggregation import average_tensors, check_update, spec_of
from fedamole.federated.messages import ClientMessage, ServerMessage
from fedamole.federated.update_dp import UpdatePrivacy
from fedamole.training import TrainResult, local_train

__all__ = ["LoRAStrategy", "state_key", "train_adapter"]

log = logging.getLogger(__name__)


class LoRAStrategy(RoundTemplate):
    """A federated LoRA algorithm; subclasses set the class flags (and FedDPA overrides hooks).

    Attributes:
        shared_parts: adapter halves sent and averaged every round after the initial broadcast.
        trained_parts: halves of the federated adapter that local training updates.
        adapters: peft adapter names to install; the first is the federated one.
        broadcast_init: whether the server broadcasts the initial adapter (False: local-only).
    """

    name: ClassVar[str] = ""
    shared_parts: ClassVar[tuple[str, ...]] = PARTS
    trained_parts: ClassVar[tuple[str, ...]] = PARTS
    adapters: ClassVar[tuple[str, ...]] = (DEFAULT_ADAPTER,)
    broadcast_init: ClassVar[bool] = True

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.num_clients = cfg.federation.num_clients
        self.global_state: dict[str, torch.Tensor] = {}
        self.initialized = False  # the initial broadcast has gone out
        self.dirty = False  # the shared parts changed since the last dispatch
        self.missed: set[int] = set()  # clients that gave no reply last round: resend everything
        # privacy.updates = "gaussian": clip, noise, account (one upload per round 1..R)
        self.update_dp: UpdatePrivacy | None = None
        if cfg.privacy.updates == "gaussian":
            self.update_dp = UpdatePrivacy(cfg, releases=cfg.federation.rounds)

    # ---------------------------------------------------------------------------------- server side

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        return install_lora(model, self.cfg.baselines, self.adapters)

    def setup(self, model: PreTrainedModel) -> None:
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        self.global_state = initial_lora_state(model, generator=gen)

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        config = RoundPlan.for_round(self.cfg, rnd).to_config()
        tensors = self._dispatch()
        # a client that failed may have missed a broadcast: it gets the whole global adapter (the
        # parts it keeps private are overwritten only if it holds none, see _receive)
        full = dict(self.global_state) if self.broadcast_init else {}
        missed, self.missed = self.missed, set()
        return {
            c: ServerMessage(rnd, c, {**full, **tensors} if c in missed else dict(tensors), config)
            for c in range(self.num_clients)
        }

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        upload = RoundPlan.for_round(self.cfg, rnd).upload and bool(self.shared_parts)
        expected = spec_of(select_parts(self.global_state, self.shared_parts)) if upload else {}
        accepted, rejected = screen_updates(
            rnd,
            updates,
            lambda client, msg: check_update(msg.tensors, expected),
            weighted=self.cfg.federation.weighting == "examples",
        )
        self.missed = set(range(self.num_clients)) - set(updates)
        info: dict[str, Any] = {}
        if upload:
            if accepted and self.update_dp is not None:
                self._merge_private(rnd, accepted, self.update_dp)
                info = {"metrics": dict(self.update_dp.round_info)}
            elif accepted:
                self.merge(accepted)
            self.dirty = True  # clients trained away from the global parts: always resend them
        return RoundSummary(rnd, tuple(accepted), rejected, info)

    def _merge_private(
        self, rnd: int, accepted: Mapping[int, ClientMessage], dp: UpdatePrivacy
    ) -> None:
        """:meth:`merge` under client-level DP (:mod:`fedamole.federated.update_dp`): each
        update clipped against the global parts every client received, one group of all
        accepted clients, noise ``z C / m`` on every averaged tensor."""
        keys = sorted(next(iter(accepted.values())).tensors)
        reference = {k: self.global_state[k] for k in keys}
        clipped, norms = {}, []
        for c in sorted(accepted):
            tensors, norm = dp.clip(accepted[c].tensors, reference)
            clipped[c], norms = replace(accepted[c], tensors=tensors), [*norms, norm]
        averaged, gen, m = self._average(clipped), dp.generator(rnd), len(clipped)
        self.global_state.update({k: dp.noise(averaged[k], m, gen) for k in keys})
        dp.step(sorted(clipped), [m], norms)

    def assignment_record(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "global": self.global_state,
            "initialized": self.initialized,
            "dirty": self.dirty,
            "missed": sorted(self.missed),
            **({"update_dp": self.update_dp.state_dict()} if self.update_dp else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_state = dict(state["global"])
        self.initialized, self.dirty = bool(state["initialized"]), bool(state["dirty"])
        self.missed = {int(c) for c in state.get("missed", [])}  # absent before it existed
        if self.update_dp is not None:
            self.update_dp.load_state_dict(state["update_dp"])

    def _dispatch(self) -> dict[str, torch.Tensor]:
        if not self.broadcast_init:
            return {}
        if not self.initialized:
            self.initialized, self.dirty = True, False
            return dict(self.global_state)
        if self.dirty:
            self.dirty = False
            return select_parts(self.global_state, self.shared_parts)
        return {}

    def merge(self, accepted: Mapping[int, ClientMessage]) -> None:
        """Fold this round's accepted uploads into the server state: their average replaces the
        global shared parts (a subclass may average within groups of clients instead)."""
        self.global_state.update(self._average(accepted))

    def _average(self, accepted: Mapping[int, ClientMessage]) -> dict[str, torch.Tensor]:
        clients = sorted(accepted)
        weights = None
        if self.cfg.federation.weighting == "examples":
            weights = [float(accepted[c].config["num_examples"]) for c in clients]
        keys = sorted(accepted[clients[0]].tensors)
        return {
            k: average_tensors([accepted[c].tensors[k] for c in clients], weights) for k in keys
        }

    # ---------------------------------------------------------------------------------- client side

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        self._receive(job.msg, ctx)
        for name in self.adapters:
            set_lora_state(ctx.model, ctx.state[state_key(name)], name)

    def evaluate_received(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        return prefixed("received", self.evaluate(ctx))

    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        metrics = self.train(ctx, job.plan.lr)
        for name in self.adapters:
            ctx.state[state_key(name)] = lora_state(ctx.model, name)
        return metrics

    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        if not job.plan.upload:
            return {}
        return select_parts(ctx.state[state_key(DEFAULT_ADAPTER)], self.shared_parts)

    def evaluate_personalized(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        metrics = prefixed("test", self.evaluate(ctx))
        if ctx.data.eval:
            metrics["eval/loss"] = self.eval_loss(ctx)
        return metrics

    def train(self, ctx: ClientContext, lr: float) -> dict[str, float]:
        """One round of local training of the federated adapter's ``trained_parts``."""
        params = lora_parameters(ctx.model, DEFAULT_ADAPTER, self.trained_parts)
        result = train_adapter(ctx, self.cfg, params, lr=lr)
        return {"train/loss": result.loss, "train/tokens": result.tokens, **result.step_metrics()}

    def evaluate(self, ctx: ClientContext) -> dict[str, float]:
        """Test-split metrics of the model as loaded (``base.evaluate_test``)."""
        return evaluate_test(ctx, self.cfg)

    def eval_loss(self, ctx: ClientContext) -> float:
        """Token-weighted response NLL on the eval split (logged only)."""
        return eval_loss(ctx, self.cfg)

    def private_init(self, ctx: ClientContext, adapter: str) -> dict[str, torch.Tensor]:
        """Initial state of a private (never sent) extra adapter, such as FedDPA's local one: drawn
        from ``run.seed + 1``, so every client starts it from the same weights too."""
        gen = torch.Generator().manual_seed(self.cfg.run.seed + 1)
        return initial_lora_state(ctx.model, generator=gen, adapter=adapter)

    def _receive(self, msg: ServerMessage, ctx: ClientContext) -> None:
        key = state_key(DEFAULT_ADAPTER)
        received = {k: v.clone() for k, v in msg.tensors.items()}  # never alias the server's
        shared = select_parts(received, self.shared_parts)
        # shared parts come from the server; a part the client keeps private stays its own (the
        # server's copy of it fills the gap only when the client holds none: a missed broadcast)
        own = {**received, **{k: v for k, v in ctx.state.get(key, {}).items() if k not in shared}}
        if not own and not self.broadcast_init:  # local-only: the same init, drawn here
            gen = torch.Generator().manual_seed(self.cfg.run.seed)
            own = initial_lora_state(ctx.model, generator=gen)
        if not own:
            raise RuntimeError(
                f"client {ctx.client_id} holds no adapter and none was sent; "
                "it missed the initial broadcast"
            )
        ctx.state[key] = own
        for name in self.adapters[1:]:
            if state_key(name) not in ctx.state:
                ctx.state[state_key(name)] = self.private_init(ctx, name)


def state_key(adapter: str) -> str:
    """Where a client keeps an adapter's state in ``ctx.state``: ``"lora"`` for the federated
    (default) adapter, ``"lora_<name>"`` for a private one."""
    return "lora" if adapter == DEFAULT_ADAPTER else f"lora_{adapter}"


def train_adapter(
    ctx: ClientContext,
    cfg: Config,
    params: Sequence[torch.nn.Parameter],
    *,
    lr: float,
    steps: int | None = None,
    decoupled_weight_decay: float | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``params`` (only they require gradients) on the client's persistent batch stream.

    Args:
        ctx: the client; its ``state["stream"]`` is read and advanced.
        cfg: the run config (``train`` section, ``model.max_length``).
        params: the tensors to optimize (a fresh Adam, :func:`~fedamole.training.local_train`).
        lr: this round's learning rate.
        steps: optimizer steps (default ``train.steps``).
        decoupled_weight_decay: AdamW's weight decay (FDLoRA); ``None``: plain Adam.
        penalty: a term added to every step's loss (:func:`~fedamole.training.local_train`).
    """
    train_cfg = cfg.train if steps is None else cfg.train.model_copy(update={"steps": steps})
    stream = client_stream(ctx, cfg)
    with trainable(ctx.model, params):
        result = local_train(
            ctx.model,
            params,
            stream,
            train_cfg,
            lr=lr,
            pad_id=ctx.tokenizer.pad_token_id,
            progress=ctx.progress,
            decoupled_weight_decay=decoupled_weight_decay,
            penalty=penalty,
        )
    ctx.state["stream"] = stream.state_dict()
    return result
