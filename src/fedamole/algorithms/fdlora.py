"""FDLoRA (docs/algorithm.md#baselines): dual LoRA with a DiLoCo-style outer optimizer and fusion.

Qi et al. 2024, "FDLoRA: Personalized Federated Learning of Large Language Model via Dual LoRA
Tuning" (arXiv 2406.07925), as the FedAMoLE reference re-implements it (``baselines/fdlora.py``,
``baselines/node.py``, ``baselines/trainer.py``, ``train_baselines.py``). Every client holds a
*global* adapter (federated) and a *private* one (never sent):

1. **Warm-up = round 1.** The reference trains every client once before its round loop and then
   averages; here round 1 is that warm-up: clients train the common initial adapter, the server
   averages the uploads (unweighted, or by training-set size with ``federation.weighting =
   "examples"``) and creates the outer optimizer. Rounds ``2..R`` are the reference's FDLoRA rounds
   ``0..R-2``, so a run has ``R`` local-training phases in all, as every other algorithm here
   (the reference runs warm-up + ``R``). The learning rate is ``lr * decay^(round-1)``; the
   reference's warm-up also consumes one decay step, so both use ``lr`` for the warm-up and
   ``lr * decay^(i+1)`` in FDLoRA round ``i``.
2. **Local training** of the received global adapter: a fresh AdamW every round (decoupled weight
   decay ``baselines.fdlora.weight_decay``, betas and eps from ``train``), dropout seeded per
   ``(seed, round, client)``. **Sync**: in FDLoRA round ``i = round - 2`` with ``i % k == 0``
   (``k = baselines.fdlora.sync_every``, Python's modulo as the reference's, so the warm-up
   ``i = -1`` syncs only when ``k = 1``) the client copies its trained adapter into its private
   adapter (``ctx.state["private"]``).
3. **OuterOpt** (:func:`outer_step`): pseudo-gradient ``g = mean_c (global - client_c)``, one SGD
   step with lr ``baselines.fdlora.outer_lr`` and Nesterov momentum
   ``baselines.fdlora.outer_momentum`` over the global adapter, every round ``2..R`` (the last
   included); the result is broadcast.
4. **Adaptive fusion** (:func:`fusion_search`) whenever a client is evaluated and holds a private
   adapter: weights ``w`` in ``[-1.5, 1.5]^2`` minimizing the mean loss on
   ``baselines.fdlora.fusion_batches`` batches (``train.batch_size`` examples each) of the
   embedding ("aux") split plus ``baselines.fdlora.fusion_l1 * mean|w|``, with at most
   ``baselines.fdlora.fusion_budget`` loss evaluations; the evaluated model is
   ``w0 * global + w1 * private`` element-wise on every LoRA A and B.

Evaluation timing (:meth:`~fedamole.algorithms.base.RoundPlan.for_round`): the reference
evaluates the fused model after the server's outer step (``eval.timing = "global"``: the client
fuses the *received* global adapter with its private one before training, logged as
``test_global`` of the previous round; the engine adds round ``R+1`` for the last step).
``"personalized"`` fuses the adapter right after local training with the private one instead (an
"-FT"-style variant the reference does not have); ``"both"`` does both. A client without a private
adapter (before the first sync) is evaluated on the global adapter unfused (the reference never
evaluates then). With ``eval.every = k`` only the rounds it selects are evaluated, so only they
fuse and advance the fusion data's position. Fusion weights are logged as ``fusion/<when>_w0``,
``_w1``, ``_objective`` (``<when>`` = ``received`` or ``local``).

Deviations from the reference:

- **Fusion search.** The reference runs nevergrad ``NGOpt`` (budget 5) from ``(0, 0)``; we run a
  deterministic compass search (:func:`fusion_search`): evaluate ``(0, 0)``, poll ``+-step`` along
  each axis (step 1, so the first polls are the pure global and pure private adapters), move to the
  first improving point, halve the step when none improves. The fused model depends on ``w`` only
  through ``+-w`` (LoRA is bilinear in A and B; evaluation has no dropout), so a point whose
  negation was evaluated is answered from the cache without spending budget. Guarantee: the result
  is the best point evaluated, inside the box, after at most ``budget`` loss evaluations, so its
  objective is never worse than ``(0, 0)``'s.
- **Fusion data.** The reference draws 5 fresh aux batches for *every* candidate (a persistent,
  unshuffled loader), so candidates are compared on different data. We draw the batches once per
  search (the next ones of the same persistent, in-order walk over the embedding split, position in
  ``ctx.state["fusion_position"]``) and score every candidate on them. The loss is token-weighted
  over those batches (the reference: mean of per-batch means / batch size; equal for batch size 1).
  A client with an empty embedding split fuses on its training examples (logged).
- **Precision.** float32 adapters (:mod:`~fedamole.algorithms.lora_common`), the reference bf16.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
    RoundSummary,
    RoundTemplate,
    eval_loss,
    evaluate_test,
    screen_updates,
)
from fedamole.algorithms.lora_common import (
    initial_lora_state,
    install_lora,
    lora_parameters,
    lora_state,
    set_lora_state,
)
from fedamole.algorithms.lora_strategy import train_adapter
from fedamole.config import Config
from fedamole.data.types import Example
from fedamole.evaluation import mean_loss
from fedamole.federated.aggregation import average_tensors, check_update, spec_of
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = ["FDLoRA", "FusionResult", "fusion_search", "outer_step"]

log = logging.getLogger(__name__)

FUSION_BOUND = 1.5  # the reference's box [-1.5, 1.5]^2

State = dict[str, torch.Tensor]


def outer_step(
    global_state: Mapping[str, torch.Tensor],
    clients: Sequence[Mapping[str, torch.Tensor]],
    momentum_buffer: Mapping[str, torch.Tensor],
    *,
    lr: float,
    momentum: float,
    weights: Sequence[float] | None = None,
) -> tuple[State, State]:
    """One server OuterOpt step: Nesterov SGD on the pseudo-gradient (module docstring, item 3).

    ``g = mean_c (global - client_c)`` (weighted when ``weights`` are given), then
    ``torch.optim.SGD(nesterov=True, dampening=0)``: ``buf = g`` on the first step (empty
    ``momentum_buffer``), else ``buf = momentum * buf + g``; ``global - lr * (g + momentum * buf)``.

    Args:
        global_state: key -> global tensor.
        clients: the clients' trained tensors (same keys and shapes).
        momentum_buffer: key -> buffer from the previous step, or empty before the first step.
        lr: outer learning rate.
        momentum: Nesterov momentum.
        weights: optional per-client weights (normalized).

    Returns:
        The new global state and the new momentum buffer (new tensors; inputs are not modified).
    """
    new_state, new_buffer = {}, {}
    for key, theta in global_state.items():
        grad = average_tensors([theta - client[key] for client in clients], weights)
        buf = grad.clone() if key not in momentum_buffer else momentum * momentum_buffer[key] + grad
        new_state[key] = theta - lr * (grad + momentum * buf)
        new_buffer[key] = buf
    return new_state, new_buffer


@dataclass(frozen=True)
class FusionResult:
    """Outcome of :func:`fusion_search`.

    Attributes:
        weights: the best point found, ``(w_global, w_private)``.
        objective: its objective (loss + L1 penalty).
        evaluations: loss evaluations spent (at most the budget).
        history: every distinct point evaluated, in order, with its objective.
    """

    weights: tuple[float, float]
    objective: float
    evaluations: int
    history: tuple[tuple[tuple[float, float], float], ...]


def fusion_search(
    loss: Callable[[tuple[float, float]], float],
    *,
    budget: int,
    l1: float,
    bound: float = FUSION_BOUND,
    step: float = 1.0,
    min_step: float = 1.0 / 1024,
    sign_symmetric: bool = True,
) -> FusionResult:
    """Deterministic compass search for the fusion weights (see the module docstring).

    Minimizes ``loss(w) + l1 * mean(|w|)`` over ``[-bound, bound]^2`` starting at ``(0, 0)``.

    Args:
        loss: the (expensive) loss of the fused model at ``w``.
        budget: the most calls of ``loss`` (>= 1).
        l1: coefficient of the mean-absolute-weight penalty.
        bound: the half-width of the box.
        step: the initial poll step.
        min_step: stop when the step falls below this (even with budget left).
        sign_symmetric: ``loss(w) == loss(-w)``; a point whose negation was evaluated is taken
            from the cache without a call.

    Returns:
        The best evaluated point (objective never above that of ``(0, 0)``).
    """
    if budget < 1:
        raise ValueError(f"`budget` ({budget}) must be >= 1")
    cache: dict[tuple[float, float], float] = {}
    history: list[tuple[tuple[float, float], float]] = []

    def objective(w: tuple[float, float]) -> float | None:
        key = (w[0] + 0.0, w[1] + 0.0)  # -0.0 -> 0.0
        mirror = (-w[0] + 0.0, -w[1] + 0.0)
        for k in (key, mirror) if sign_symmetric else (key,):
            if k in cache:
                return cache[k]
        if len(history) >= budget:
            return None
        value = float(loss(key)) + l1 * (abs(key[0]) + abs(key[1])) / 2
        cache[key] = value
        history.append((key, value))
        return value

    best = (0.0, 0.0)
    best_value = objective(best)
    assert best_value is not None
    directions = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))
    while len(history) < budget and step >= min_step:
        moved = False
        for dx, dy in directions:
            cand = (_clip(best[0] + step * dx, bound), _clip(best[1] + step * dy, bound))
            if cand == best:
                continue
            value = objective(cand)
            if value is None:
                break
            if value < best_value:
                best, best_value, moved = cand, value, True
                break
        if not moved:
            step /= 2
    return FusionResult(best, best_value, len(history), tuple(history))


def _clip(x: float, bound: float) -> float:
    return min(max(x, -bound), bound)


def _received(job: ClientJob) -> State:
    """A copy of the received global adapter (never alias the server's tensors)."""
    return {k: v.clone() for k, v in job.msg.tensors.items()}


def fuse(weights: tuple[float, float], global_state: State, private: State) -> State:
    """``w0 * global + w1 * private``, element-wise on every LoRA A and B."""
    w0, w1 = weights
    return {k: w0 * global_state[k] + w1 * private[k] for k in global_state}


class FDLoRA(RoundTemplate):
    """FDLoRA (server state: the global adapter and the outer optimizer's momentum buffers)."""

    name = "fdlora"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.num_clients = cfg.federation.num_clients
        self.global_state: State = {}
        self.momentum: State | None = None  # None until the warm-up creates the outer optimizer

    # ---------------------------------------------------------------------------------- server side

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        return install_lora(model, self.cfg.baselines)

    def setup(self, model: PreTrainedModel) -> None:
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        self.global_state = initial_lora_state(model, generator=gen)

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        plan = RoundPlan.for_round(self.cfg, rnd)
        # FDLoRA round i = rnd - 2 (the warm-up is i = -1); Python's modulo, as the reference
        plan = replace(
            plan, sync=plan.train and (rnd - 2) % self.cfg.baselines.fdlora.sync_every == 0
        )
        tensors = dict(self.global_state) if plan.active else {}
        config = plan.to_config()
        return {c: ServerMessage(rnd, c, tensors, config) for c in range(self.num_clients)}

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        if not 1 <= rnd <= self.cfg.federation.rounds:
            return RoundSummary(rnd, tuple(sorted(updates)))
        expected = spec_of(self.global_state)
        weighted = self.cfg.federation.weighting == "examples"
        accepted, rejected = screen_updates(
            rnd, updates, lambda client, msg: check_update(msg.tensors, expected), weighted=weighted
        )
        if not accepted:
            return RoundSummary(rnd, (), rejected, {"step": "none"})
        clients = sorted(accepted)
        uploads = [accepted[c].tensors for c in clients]
        weights = [float(accepted[c].config["num_examples"]) for c in clients] if weighted else None
        if self.momentum is None:  # the warm-up: average, then create the outer optimizer
            self.global_state = {
                k: average_tensors([u[k] for u in uploads], weights) for k in self.global_state
            }
            self.momentum, step = {}, "warm-up average"
        else:
            b = self.cfg.baselines
            self.global_state, self.momentum = outer_step(
                self.global_state,
                uploads,
                self.momentum,
                lr=b.fdlora.outer_lr,
                momentum=b.fdlora.outer_momentum,
                weights=weights,
            )
            step = "outer"
        return RoundSummary(rnd, tuple(clients), rejected, {"step": step})

    def assignment_record(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "global": self.global_state,
            "outer_created": self.momentum is not None,
            "momentum": self.momentum or {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_state = dict(state["global"])
        self.momentum = dict(state["momentum"]) if state["outer_created"] else None

    # ---------------------------------------------------------------------------------- client side

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        """Nothing to merge: the received global adapter is loaded where it is used."""

    def evaluate_received(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        return self._evaluate(ctx, _received(job), "received")

    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        set_lora_state(ctx.model, _received(job))
        result = train_adapter(
            ctx,
            self.cfg,
            lora_parameters(ctx.model),
            lr=job.plan.lr,
            decoupled_weight_decay=self.cfg.baselines.fdlora.weight_decay,
        )
        if job.plan.sync:
            ctx.state["private"] = {k: v.clone() for k, v in lora_state(ctx.model).items()}
        return {"train/loss": result.loss, "train/tokens": result.tokens, **result.step_metrics()}

    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        return self._adapter(ctx, job) if job.plan.upload else {}

    def evaluate_personalized(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        return self._evaluate(ctx, self._adapter(ctx, job), "local")

    def _adapter(self, ctx: ClientContext, job: ClientJob) -> State:
        """The client's adapter this round: the trained one (still loaded right after training),
        else the received global one."""
        return lora_state(ctx.model) if job.plan.train else _received(job)

    def _evaluate(self, ctx: ClientContext, adapter: State, when: str) -> dict[str, float]:
        """Fuse ``adapter`` with the private one (if any), load the result and score it."""
        cfg, out = self.cfg, {}
        private = ctx.state.get("private")
        if private is None:
            set_lora_state(ctx.model, adapter)
        else:
            result = self._fuse(ctx, adapter, private)
            out[f"fusion/{when}_w0"], out[f"fusion/{when}_w1"] = result.weights
            out[f"fusion/{when}_objective"] = result.objective
        prefix = "received" if when == "received" else "test"
        out.update({f"{prefix}/{k}": v for k, v in evaluate_test(ctx, cfg).items()})
        if when == "local" and ctx.data.eval:
            out["eval/loss"] = eval_loss(ctx, cfg)
        return out

    def _fuse(self, ctx: ClientContext, global_state: State, private: State) -> FusionResult:
        """Run the fusion search and leave the best fused adapter loaded."""
        cfg, b = self.cfg, self.cfg.baselines
        examples = self._fusion_examples(ctx)

        def loss(w: tuple[float, float]) -> float:
            set_lora_state(ctx.model, fuse(w, global_state, private))
            return mean_loss(
                ctx.model,
                ctx.tokenizer,
                examples,
                batch_size=cfg.train.batch_size,
                max_length=cfg.model.max_length,
            )

        result = fusion_search(loss, budget=b.fdlora.fusion_budget, l1=b.fdlora.fusion_l1)
        set_lora_state(ctx.model, fuse(result.weights, global_state, private))
        return result

    def _fusion_examples(self, ctx: ClientContext) -> list[Example]:
        """The next ``fusion_batches * batch_size`` examples of the in-order, cyclic walk over the
        embedding split (the training split if it is empty); the position is client state."""
        pool = ctx.data.embedding
        if not pool:
            log.warning(
                "client %d has no embedding split; fusing on its training data", ctx.client_id
            )
            pool = ctx.data.train
        count = self.cfg.baselines.fdlora.fusion_batches * self.cfg.train.batch_size
        start = int(ctx.state.get("fusion_position", 0))
        ctx.state["fusion_position"] = (start + count) % len(pool)
        return [pool[(start + i) % len(pool)] for i in range(count)]
