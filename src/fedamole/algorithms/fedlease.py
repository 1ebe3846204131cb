"""FedLEASE (Wang et al., NeurIPS 2025, arXiv 2509.15087): clients clustered once by their warm-up
LoRA, one LoRA expert per cluster, and a per-module adaptive top-M router over all experts
(docs/algorithm.md#fedlease).

Phases:

- **Warm-up** (rounds ``1..W``, ``W = baselines.fedlease.warmup_rounds``): local-only LoRA; every
  client draws the adapter from ``run.seed`` itself and nothing travels, except that in round
  ``W`` each client uploads its whole adapter (A and B).
- **Clustering** (the server, once, after round ``W``; :mod:`.fedlease_cluster`): clients by the
  mean over modules of ``1 - cos(vec B_i, vec B_j)``, average linkage, ``M`` the best silhouette
  over ``2..K_max`` with ``K_max = min(N - 1, mole.max_experts_per_client)`` unless
  ``baselines.fedlease.max_clusters`` is set. Expert ``k`` starts as the unweighted mean (A and B
  separately) of its members' round-``W`` adapters; every router starts from one draw of
  ``run.seed + 2`` (uniform on ``+-1/sqrt(d_in)``, ``nn.Linear``'s default). A client that sent
  nothing in round ``W`` joins the largest cluster (the smallest index on a tie). The round's
  server metrics: ``fedlease/clusters``, ``fedlease/silhouette`` and ``fedlease/rand_index``
  (against the partition's groups of related clients).
- **Rounds** ``W+1..R``: the server sends every client all M experts and its cluster's router;
  the client trains only its own cluster's expert and its router (:mod:`.fedlease_router`) and
  uploads both; the server replaces expert ``k`` and router ``k`` by the unweighted mean of the
  accepted uploads of cluster ``k``'s members (A and B separately); a cluster with none keeps
  its expert and router.

Message keys: expert ``k`` travels as ``"lora_A:<module>:<k>"``/``"lora_B:<module>:<k>"``, the
router as ``"router:<module>"``; uploads carry the own expert as ``"lora_A:<module>"``/
``"lora_B:<module>"``. Client state: ``"lora"`` (expert 0, or the warm-up adapter),
``"lora_expert<k>"``, ``"router"``, ``"cluster"``, ``"num_experts"`` (0 in the warm-up).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from peft.functional import set_adapter
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
    RoundSummary,
    screen_updates,
)
from fedamole.algorithms.fedlease_cluster import b_distances, choose_clusters, rand_index
from fedamole.algorithms.fedlease_router import (
    expert_adapter,
    install_routers,
    router_parameters,
    router_state,
    set_router_state,
)
from fedamole.algorithms.lora_common import (
    DEFAULT_ADAPTER,
    initial_lora_state,
    install_lora,
    lora_layers,
    lora_parameters,
    lora_state,
    set_lora_state,
)
from fedamole.algorithms.lora_strategy import LoRAStrategy, state_key, train_adapter
from fedamole.config import Config
from fedamole.federated.aggregation import average_tensors, check_update, spec_of
from fedamole.federated.groups import client_groups
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = [
    "FedLEASE",
    "initial_router",
    "max_clusters",
    "pack_experts",
    "unpack_experts",
    "within_cluster_means",
]

log = logging.getLogger(__name__)


def max_clusters(cfg: Config) -> int:
    """``K_max``: ``baselines.fedlease.max_clusters``, else ``min(N - 1, M_max)`` with ``M_max``
    FedAMoLE's most experts per client (``mole.max_experts_per_client``); at least 1."""
    chosen = cfg.baselines.fedlease.max_clusters
    if chosen is None:
        chosen = min(cfg.federation.num_clients - 1, cfg.mole.max_experts_per_client)
    return max(1, chosen)


class FedLEASE(LoRAStrategy):
    """Warm-up LoRA, one-off clustering, cluster experts with an adaptive top-M router."""

    name = "fedlease"
    observes_partition = True  # the clustering's diagnostic against the partition's groups

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.adapters = tuple(expert_adapter(k) for k in range(max_clusters(cfg)))
        self.warmup = cfg.baselines.fedlease.warmup_rounds
        self.clusters: list[int] = []  # each client's cluster, empty before the clustering
        self.experts: list[dict[str, torch.Tensor]] = []  # expert k's LoRA state
        self.routers: list[dict[str, torch.Tensor]] = []  # cluster k's router state
        self.silhouettes: dict[int, float] = {}
        self.in_features: dict[str, int] = {}  # each LoRA module's d_in (setup)
        self.categories: list[frozenset[str]] | None = None  # the partition's, when known

    def observe_partition(self, categories: list[frozenset[str]]) -> None:
        """The partition's categories per client, for the ``fedlease/rand_index`` diagnostic of
        the clustering. Call before :meth:`setup`."""
        if len(categories) != self.num_clients:
            raise ValueError(f"{len(categories)} category sets for {self.num_clients} clients")
        self.categories = [frozenset(c) for c in categories]

    # ---------------------------------------------------------------------------------- server side

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        model = install_lora(model, self.cfg.baselines, self.adapters)
        return install_routers(model, len(self.adapters))

    def setup(self, model: PreTrainedModel) -> None:
        super().setup(model)
        # the routers are drawn at the clustering, once M is known
        self.in_features = {name: layer.in_features for name, layer in lora_layers(model).items()}

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        config = RoundPlan.for_round(self.cfg, rnd).to_config()
        out = {}
        for client in range(self.num_clients):
            tensors: dict[str, torch.Tensor] = {}
            extra: dict[str, int] = {}
            if self.clusters:
                own = self.clusters[client]
                tensors = {**pack_experts(self.experts), **self.routers[own]}
                extra = {"cluster": own, "num_experts": len(self.experts)}
            out[client] = ServerMessage(rnd, client, tensors, {**config, **extra})
        return out

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        upload = RoundPlan.for_round(self.cfg, rnd).upload and rnd >= self.warmup
        expected = {}
        if upload:
            expected = spec_of(
                {**self.experts[0], **self.routers[0]} if self.clusters else self.global_state
            )
        accepted, rejected = screen_updates(
            rnd, updates, lambda c, msg: check_update(msg.tensors, expected), weighted=False
        )
        info = {}
        uploads = {c: dict(msg.tensors) for c, msg in accepted.items()} if upload else {}
        if upload and not self.clusters:
            self._cluster(uploads)
            info = {"metrics": self.clustering_metrics()}
        elif uploads:
            self.experts, self.routers = within_cluster_means(
                self.experts, self.routers, self.clusters, uploads
            )
        return RoundSummary(rnd, tuple(accepted), rejected, info)

    def clustering_metrics(self) -> dict[str, float]:
        """The clustering's server metrics: ``fedlease/clusters`` (M), ``fedlease/silhouette``
        (M's, when a choice was made) and ``fedlease/rand_index`` against the partition's groups of
        related clients (:func:`~fedamole.federated.groups.client_groups`), when known."""
        out = {"fedlease/clusters": float(len(self.experts))}
        if self.silhouettes:
            out["fedlease/silhouette"] = self.silhouettes[len(self.experts)]
        if self.categories is not None:
            truth = [0] * self.num_clients
            for g, members in enumerate(client_groups(self.categories)):
                for c in members:
                    truth[c] = g
            out["fedlease/rand_index"] = rand_index(self.clusters, truth)
        return out

    def _cluster(self, uploads: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """The one-off clustering of the round-``W`` uploads (module docstring)."""
        clients = sorted(uploads)
        labels: list[int] = [0] * len(clients)
        if clients:
            dist = b_distances([uploads[c] for c in clients])
            labels, self.silhouettes = choose_clusters(dist, max_clusters(self.cfg))
        m = max(labels, default=0) + 1
        sizes = [labels.count(k) for k in range(m)]
        largest = sizes.index(max(sizes))
        by_client = dict(zip(clients, labels, strict=True))
        self.clusters = [by_client.get(c, largest) for c in range(self.num_clients)]
        self.experts = []
        for k in range(m):
            members = [c for c in clients if by_client[c] == k]
            source = [uploads[c] for c in members] or [self.global_state]
            keys = sorted(source[0])
            self.experts.append(
                {key: average_tensors([s[key] for s in source], None) for key in keys}
            )
        gen = torch.Generator().manual_seed(self.cfg.run.seed + 2)
        router = initial_router(self.in_features, m, gen)
        self.routers = [{k: v.clone() for k, v in router.items()} for _ in range(m)]
        log.info(
            "fedlease: %d clusters %s (silhouettes %s)",
            m,
            self.clusters,
            {k: round(v, 4) for k, v in self.silhouettes.items()},
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "clusters": list(self.clusters),
            "experts": self.experts,
            "routers": self.routers,
            "silhouettes": {str(k): v for k, v in self.silhouettes.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.clusters = [int(c) for c in state["clusters"]]
        self.experts = [dict(e) for e in state["experts"]]
        self.routers = [dict(r) for r in state["routers"]]
        self.silhouettes = {int(k): float(v) for k, v in state["silhouettes"].items()}

    # ---------------------------------------------------------------------------------- client side

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        if job.msg.tensors:
            m, own = int(job.msg.config["num_experts"]), int(job.msg.config["cluster"])
            experts = unpack_experts(job.msg.tensors, m)
            for k, expert in enumerate(experts):
                ctx.state[state_key(expert_adapter(k))] = expert
            ctx.state["router"] = {
                k: v.clone() for k, v in job.msg.tensors.items() if k.startswith("router:")
            }
            ctx.state["num_experts"], ctx.state["cluster"] = m, own
        elif state_key(DEFAULT_ADAPTER) not in ctx.state:  # the warm-up: drawn from run.seed
            gen = torch.Generator().manual_seed(self.cfg.run.seed)
            ctx.state[state_key(DEFAULT_ADAPTER)] = initial_lora_state(ctx.model, generator=gen)
            ctx.state["num_experts"], ctx.state["cluster"] = 0, 0
        load_client_model(ctx.model, ctx.state, len(self.adapters))

    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        m, own = int(ctx.state["num_experts"]), int(ctx.state["cluster"])
        adapter = expert_adapter(own)
        params = lora_parameters(ctx.model, adapter)
        if m:
            params += router_parameters(ctx.model)
        result = train_adapter(ctx, self.cfg, params, lr=job.plan.lr)
        ctx.state[state_key(adapter)] = lora_state(ctx.model, adapter)
        if m:
            ctx.state["router"] = router_state(ctx.model)
        return {"train/loss": result.loss, "train/tokens": result.tokens, **result.step_metrics()}

    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        if not job.plan.upload or job.rnd < self.warmup:
            return {}
        own = int(ctx.state["cluster"])
        out = dict(ctx.state[state_key(expert_adapter(own))])
        if ctx.state["num_experts"]:
            out.update(ctx.state["router"])
        return out


def load_client_model(model: torch.nn.Module, state: Mapping[str, Any], installed: int) -> None:
    """Load a client's FedLEASE state into the model: in the warm-up adapter ``default`` alone,
    ungated; after the clustering experts ``0..M-1`` gated by the router (in place)."""
    m = int(state.get("num_experts", 0))
    names = [expert_adapter(k) for k in range(max(m, 1))]
    if m > installed:
        raise ValueError(f"{m} experts but the model holds only {installed} expert adapters")
    set_adapter(model, names)
    model.requires_grad_(False)
    for name in names:
        set_lora_state(model, state[state_key(name)], name)
    set_router_state(model, state.get("router", {}) if m else {}, int(state.get("cluster", 0)))


def initial_router(
    in_features: Mapping[str, int], num_experts: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A router state ((2M-1, d_in) per module, sorted module order) drawn uniform on
    ``+-1/sqrt(d_in)`` from ``generator``."""
    out = {}
    for name, d_in in sorted(in_features.items()):
        bound = 1.0 / math.sqrt(d_in)
        shape = (2 * num_experts - 1, d_in)
        out[f"router:{name}"] = torch.empty(shape).uniform_(-bound, bound, generator=generator)
    return out


def pack_experts(experts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Experts' LoRA states as one message: ``"lora_A:<module>:<k>"`` for expert k."""
    return {f"{key}:{k}": v for k, expert in enumerate(experts) for key, v in expert.items()}


def unpack_experts(
    tensors: Mapping[str, torch.Tensor], num_experts: int
) -> list[dict[str, torch.Tensor]]:
    """Inverse of :func:`pack_experts` (cloned; other keys ignored).

    Raises:
        KeyError: an expert below ``num_experts`` is missing.
    """
    experts: list[dict[str, torch.Tensor]] = [{} for _ in range(num_experts)]
    for key, value in tensors.items():
        if key.startswith(("lora_A:", "lora_B:")):
            head, _, k = key.rpartition(":")
            experts[int(k)][head] = value.clone()
    empty = [k for k, e in enumerate(experts) if not e]
    if empty:
        raise KeyError(f"the message lacks experts {empty}")
    return experts


def within_cluster_means(
    experts: list[dict[str, torch.Tensor]],
    routers: list[dict[str, torch.Tensor]],
    clusters: list[int],
    uploads: Mapping[int, Mapping[str, torch.Tensor]],
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """The server rule: expert k and router k become the unweighted means of the uploads of
    cluster k's members (each key, so A and B separately); a cluster without an upload keeps
    both.

    Args:
        experts: M LoRA states.
        routers: M router states.
        clusters: each client's cluster.
        uploads: by client, its own expert's LoRA keys and its router's keys.
    """
    new_experts, new_routers = list(experts), list(routers)
    for k in range(len(experts)):
        members = [c for c in sorted(uploads) if clusters[c] == k]
        if not members:
            continue
        new_experts[k] = {
            key: average_tensors([uploads[c][key] for c in members], None) for key in experts[k]
        }
        new_routers[k] = {
            key: average_tensors([uploads[c][key] for c in members], None) for key in routers[k]
        }
    return new_experts, new_routers
