"""FlexLoRA (Bai et al., NeurIPS 2024): LoRA of a different rank on every client, aggregated as
full-weight updates and redistributed by truncated SVD (docs/algorithm.md#flexlora).

Client ``i`` trains a LoRA adapter of rank ``r_i`` (``[baselines.ranks]``,
:func:`~.lora_ranks.client_ranks`) with scaling ``alpha / r_i``. The server forms each module's
full update

    ``ΔW = sum_i w_i (alpha / r_i) B_i A_i``

over the clients whose upload it accepted (``w_i = 1/k``, or ``n_i / n`` with
``federation.weighting = "examples"``: the paper's rule), takes its SVD ``ΔW = U S V^T`` (exact,
float64) and sends client ``i`` the factors of the best rank-``r_i`` approximation,
``B = U_r S_r / (alpha / r_i)`` and ``A = V_r^T``, so that ``(alpha / r_i) B A = U_r S_r V_r^T``.
The client replaces its adapter by them and trains on. Round 1 starts every client from the same
initial adapter (A drawn from ``run.seed``, its first ``r_i`` rows; B = 0). Both directions carry
exactly ``r_i`` components: ``4 r_i (d_in + d_out)`` bytes per module and direction (float32).

The clients' adapters share one peft adapter of rank ``max_i r_i`` on the model; a client uses
its first ``r_i`` components (:mod:`~.lora_ranks` explains why that is exact). The product is each
client's model after its local training (the personalized metric, ``eval.timing =
"personalized"``); with ``"global"`` or ``"both"`` the received model is the client's rank-``r_i``
projection of the aggregate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
    RoundSummary,
    screen_updates,
)
from fedamole.algorithms.lora_common import DEFAULT_ADAPTER, install_lora, part_of, select_parts
from fedamole.algorithms.lora_ranks import client_ranks, pad, rank_scaling, truncate
from fedamole.algorithms.lora_strategy import LoRAStrategy, state_key
from fedamole.config import Config
from fedamole.federated.aggregation import check_update, spec_of
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = ["FlexLoRA", "full_updates", "redistribute"]


class FlexLoRA(LoRAStrategy):
    """Heterogeneous-rank LoRA with SVD redistribution."""

    name = "flexlora"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.ranks = client_ranks(cfg)
        self.max_rank = max(self.ranks)
        self.alpha = cfg.baselines.lora_alpha
        self.client_states: dict[int, dict[str, torch.Tensor]] = {}  # what client i gets next

    # ---------------------------------------------------------------------------------- server side

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        wide = self.cfg.baselines.model_copy(update={"lora_rank": self.max_rank})
        return install_lora(model, wide, self.adapters)

    def setup(self, model: PreTrainedModel) -> None:
        super().setup(model)  # the initial adapter of rank max_rank, drawn from run.seed
        self.client_states = {c: truncate(self.global_state, r) for c, r in enumerate(self.ranks)}

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        config = RoundPlan.for_round(self.cfg, rnd).to_config()
        fresh = not self.initialized or self.dirty  # the start, or an aggregation since
        self.initialized, self.dirty = True, False
        missed, self.missed = self.missed, set()
        return {
            c: ServerMessage(
                rnd, c, dict(self.client_states[c]) if fresh or c in missed else {}, config
            )
            for c in range(self.num_clients)
        }

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        upload = RoundPlan.for_round(self.cfg, rnd).upload
        accepted, rejected = screen_updates(
            rnd,
            updates,
            lambda client, msg: self.update_problems(client, msg, upload),
            weighted=self.weighted_by_examples,
        )
        self.missed = set(range(self.num_clients)) - set(updates)
        if upload:
            if accepted:
                self.merge(accepted)
            self.dirty = True
        return RoundSummary(rnd, tuple(accepted), rejected)

    @property
    def weighted_by_examples(self) -> bool:
        """Whether the aggregation weighs clients by their ``num_examples``."""
        return self.cfg.federation.weighting == "examples"

    def update_problems(self, client: int, msg: ClientMessage, upload: bool) -> list[str]:
        """Why an upload is refused: keys or shapes other than the client's rank-``r_i``
        adapter (none expected when the round uploads nothing), non-finite values."""
        return check_update(msg.tensors, spec_of(self.client_states[client]) if upload else {})

    def merge(self, accepted: Mapping[int, ClientMessage]) -> None:
        """Every client's next adapter: its rank-r_i projection of the accepted clients' update."""
        clients = sorted(accepted)
        if self.cfg.federation.weighting == "examples":
            counts = [float(accepted[c].config["num_examples"]) for c in clients]
        else:
            counts = [1.0] * len(clients)
        weights = [n / sum(counts) for n in counts]
        deltas = full_updates(
            [accepted[c].tensors for c in clients],
            [self.ranks[c] for c in clients],
            weights,
            self.alpha,
        )
        self.client_states = {
            c: redistribute(deltas, r, self.alpha) for c, r in enumerate(self.ranks)
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranks": list(self.ranks), "clients": self.client_states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = [int(r) for r in state["ranks"]]
        if saved != self.ranks:
            raise ValueError(
                f"the checkpoint's client ranks {saved} differ from this config's {self.ranks} "
                "([baselines.ranks], run.seed or the [mole] budget changed); start a new run"
            )
        super().load_state_dict(state)
        self.client_states = {int(c): dict(s) for c, s in state["clients"].items()}

    # ---------------------------------------------------------------------------------- client side

    def client_rank(self, ctx: ClientContext) -> int:
        """The rank the client trains and sends: its ``r_i``."""
        return self.ranks[ctx.client_id]

    def local_update(self, rnd: int, msg: ServerMessage, ctx: ClientContext) -> ClientMessage:
        with rank_scaling(ctx.model, self.client_rank(ctx)):
            return super().local_update(rnd, msg, ctx)

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        """What arrived, its first ``r_i`` components, zero-padded to the model's adapter."""
        own = truncate(job.msg.tensors, self.client_rank(ctx))
        msg = ServerMessage(job.msg.round, job.msg.client, pad(own, self.max_rank), job.msg.config)
        super().load(ctx, ClientJob(job.rnd, msg, job.plan))

    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        if not job.plan.upload:
            return {}
        own = select_parts(ctx.state[state_key(DEFAULT_ADAPTER)], self.shared_parts)
        return truncate(own, self.client_rank(ctx))


def full_updates(
    uploads: Sequence[Mapping[str, torch.Tensor]],
    ranks: Sequence[int],
    weights: Sequence[float],
    alpha: float,
) -> dict[str, torch.Tensor]:
    """Per module, ``sum_i w_i (alpha / r_i) B_i A_i`` in float64 (``(d_out, d_in)``).

    Args:
        uploads: each client's ``lora_A:<module>`` ``(r_i, d_in)`` and ``lora_B:<module>``
            ``(d_out, r_i)``.
        ranks: each client's ``r_i``.
        weights: each client's ``w_i``.
        alpha: the LoRA alpha.
    """
    modules = sorted(k.partition(":")[2] for k in uploads[0] if part_of(k) == "lora_A")
    out = {}
    for module in modules:
        total = None
        for upload, rank, weight in zip(uploads, ranks, weights, strict=True):
            b = upload[f"lora_B:{module}"].double()
            a = upload[f"lora_A:{module}"].double()
            term = (weight * alpha / rank) * (b @ a)
            total = term if total is None else total + term
        out[module] = total
    return out


def redistribute(
    deltas: Mapping[str, torch.Tensor], rank: int, alpha: float
) -> dict[str, torch.Tensor]:
    """A rank-``rank`` adapter whose update ``(alpha / rank) B A`` is the best rank-``rank``
    approximation of each module's ``delta`` (truncated SVD; zero components beyond the
    matrix's own rank)."""
    out = {}
    for module, delta in sorted(deltas.items()):
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        keep = min(rank, s.numel())
        b = u[:, :keep] * (s[:keep] / (alpha / rank))
        a = vh[:keep]
        out[f"lora_A:{module}"] = a.float()
        out[f"lora_B:{module}"] = b.float()
    return pad(dict(sorted(out.items())), rank)
