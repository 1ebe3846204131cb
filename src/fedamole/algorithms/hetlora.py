"""HetLoRA (Cho et al., EMNLP 2024): LoRA of a different rank on every client, truncated from one
global adapter, aggregated with zero-padding and norm weights, with rank self-pruning
(docs/algorithm.md#hetlora).

The server holds one global adapter of rank ``r_max = max_i r_i`` (``[baselines.ranks]``). Client
``i`` receives its first ``r_i`` components (truncation), trains them with the rank self-pruning
regularizer added to its loss,

    ``lambda * sum_modules || B[:, t:r_i] A[t:r_i, :] ||_F``, ``t = floor(gamma r_i)``

(``baselines.hetlora.reg_lambda``, ``prune_gamma``; ``t`` kept between 1 and ``r_i - 1``,
:func:`tail_start`), and, when that tail's norm after training is
below the one it had after the previous round's training, prunes its rank to ``t`` (never below
1): the tail is dropped for good. It uploads its first ``r_i`` (now possibly fewer) components.
The server zero-pads every accepted upload to ``r_max`` and averages A and B factor-wise with
weights ``p_k = ||B_k A_k||_F / sum_j ||B_j A_j||_F`` per module (uniform when every norm is 0),
and learns each client's current rank from its upload's shape.

Every client scales its adapter by ``alpha / r_max``, the global adapter's: one component means
the same on every client, and pruning a (regularized, small) tail changes a client's model by
that tail only. The adapters share one peft adapter of rank ``r_max`` (:mod:`~.lora_ranks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
)
from fedamole.algorithms.flexlora import FlexLoRA
from fedamole.algorithms.lora_common import (
    DEFAULT_ADAPTER,
    lora_layers,
    lora_parameters,
    lora_state,
    part_of,
    set_lora_state,
)
from fedamole.algorithms.lora_ranks import pad, truncate
from fedamole.algorithms.lora_strategy import LoRAStrategy, state_key, train_adapter
from fedamole.config import Config
from fedamole.federated.aggregation import check_update, spec_of
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = ["HetLoRA", "norm_weighted_average", "tail_start", "upload_rank"]


class HetLoRA(FlexLoRA):
    """Heterogeneous-rank LoRA: truncation down, zero-padding up, norm weights, self-pruning."""

    name = "hetlora"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.reg_lambda = cfg.baselines.hetlora.reg_lambda
        self.gamma = cfg.baselines.hetlora.prune_gamma
        self.initial_ranks = list(self.ranks)  # self.ranks: the server's view, shrinking

    # ---------------------------------------------------------------------------------- server side

    def setup(self, model: PreTrainedModel) -> None:
        super().setup(model)
        self.client_states = {}  # the server sends truncations of the global adapter instead

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        config = RoundPlan.for_round(self.cfg, rnd).to_config()
        fresh = not self.initialized or self.dirty
        self.initialized, self.dirty = True, False
        missed, self.missed = self.missed, set()
        return {
            c: ServerMessage(
                rnd,
                c,
                truncate(self.global_state, self.ranks[c]) if fresh or c in missed else {},
                config,
            )
            for c in range(self.num_clients)
        }

    weighted_by_examples = False  # the norms are HetLoRA's weights

    def update_problems(self, client: int, msg: ClientMessage, upload: bool) -> list[str]:
        """Keys and shapes of a rank between 1 and the client's last one, finite values."""
        if not upload or not msg.tensors:
            return check_update(msg.tensors, {})
        rank = upload_rank(msg.tensors)
        if not 1 <= rank <= self.ranks[client]:
            return [f"rank {rank}: a client's rank can only shrink, from {self.ranks[client]}"]
        return check_update(msg.tensors, spec_of(truncate(self.global_state, rank)))

    def merge(self, accepted: Mapping[int, ClientMessage]) -> None:
        clients = sorted(accepted)
        for c in clients:
            self.ranks[c] = upload_rank(accepted[c].tensors)
        padded = [pad(accepted[c].tensors, self.max_rank) for c in clients]
        self.global_state.update(norm_weighted_average(padded))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial_ranks": self.initial_ranks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = [int(r) for r in state["initial_ranks"]]
        if saved != self.initial_ranks:
            raise ValueError(
                f"the checkpoint's initial client ranks {saved} differ from this config's "
                f"{self.initial_ranks} ([baselines.ranks], run.seed or the [mole] budget "
                "changed); start a new run"
            )
        LoRAStrategy.load_state_dict(self, state)
        self.ranks = [int(r) for r in state["ranks"]]

    # ---------------------------------------------------------------------------------- client side

    def client_rank(self, ctx: ClientContext) -> int:
        """The client's current rank: its initial one until it prunes."""
        return int(ctx.state.get("rank", self.initial_ranks[ctx.client_id]))

    def local_update(self, rnd: int, msg: ServerMessage, ctx: ClientContext) -> ClientMessage:
        # every client scales by alpha / r_max, peft's scaling of the installed adapter
        return super(FlexLoRA, self).local_update(rnd, msg, ctx)

    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        rank = self.client_rank(ctx)
        start = tail_start(rank, self.gamma)
        params = lora_parameters(ctx.model, DEFAULT_ADAPTER, self.trained_parts)
        result = train_adapter(
            ctx, self.cfg, params, lr=job.plan.lr, penalty=self._penalty(ctx, start, rank)
        )
        tail = float(_tail_norm(ctx.model, start, rank))
        previous = ctx.state.get("tail_norm")
        if previous is not None and tail < previous and start < rank:
            rank = start
            ctx.state["rank"] = rank
            state = pad(truncate(lora_state(ctx.model), rank), self.max_rank)
            set_lora_state(ctx.model, state)  # what the client keeps is what it is tested as
        ctx.state["tail_norm"] = tail
        ctx.state[state_key(DEFAULT_ADAPTER)] = lora_state(ctx.model)
        return {
            "train/loss": result.loss,
            "train/tokens": result.tokens,
            "train/rank": rank,
            "train/tail_norm": tail,
            **result.step_metrics(),
        }

    def _penalty(
        self, ctx: ClientContext, start: int, rank: int
    ) -> Callable[[], torch.Tensor] | None:
        if self.reg_lambda == 0 or start >= rank:
            return None
        return lambda: self.reg_lambda * _tail_norm(ctx.model, start, rank)


def tail_start(rank: int, gamma: float) -> int:
    """Where the regularized tail of a rank-``rank`` adapter begins: ``floor(gamma * rank)``, at
    most ``rank - 1`` (a tail of one component) and at least 1 (a client never prunes to 0)."""
    return max(1, min(rank - 1, math.floor(gamma * rank)))


def _tail_norm(model: torch.nn.Module, start: int, rank: int) -> torch.Tensor:
    """``sum_modules ||B[:, start:rank] A[start:rank, :]||_F`` of the model's federated adapter."""
    total = torch.zeros(())
    for layer in lora_layers(model).values():
        a = layer.lora_A[DEFAULT_ADAPTER].weight[start:rank]
        b = layer.lora_B[DEFAULT_ADAPTER].weight[:, start:rank]
        total = total + torch.linalg.matrix_norm(b @ a)
    return total


def upload_rank(tensors: Mapping[str, torch.Tensor]) -> int:
    """The rank of an upload: the row count of its A factors."""
    return int(next(v.shape[0] for k, v in sorted(tensors.items()) if part_of(k) == "lora_A"))


def norm_weighted_average(padded: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per module, A and B averaged with weights ``||B_k A_k||_F / sum_j ||B_j A_j||_F``
    (uniform when every norm is 0)."""
    modules = sorted(k.partition(":")[2] for k in padded[0] if part_of(k) == "lora_A")
    out = {}
    for module in modules:
        a_key, b_key = f"lora_A:{module}", f"lora_B:{module}"
        norms = torch.stack(
            [torch.linalg.matrix_norm(u[b_key].double() @ u[a_key].double()) for u in padded]
        )
        total = norms.sum()
        weights = norms / total if total > 0 else torch.full_like(norms, 1 / len(padded))
        for key in (a_key, b_key):
            stacked = torch.stack([u[key].double() for u in padded])
            out[key] = torch.einsum("k,k...->...", weights, stacked).float()
    return out
