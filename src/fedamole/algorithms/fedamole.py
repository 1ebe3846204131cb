"""FedAMoLE (docs/algorithm.md): heterogeneous mixtures of LoRA experts with RSEA.

Server state, per MoLE module: the expert bank (all E domain experts, the shared expert, the global
token projection, and gate vectors for the linear-router ablation), the current assignment, and the
last known RSEA embeddings. Each round:

1. ``configure_round``: every client gets the weights of the experts it is assigned (plus shared
   expert and token projection) whenever the bank changed since the last dispatch (round 0 and after
   every aggregation); otherwise it continues with what it holds.
2. ``local_update`` (on the client): load, train (rounds >= 1), evaluate on the test split right
   after training (the personalized metric, in the rounds ``eval.every`` selects,
   docs/algorithm.md#evaluation-timing), compute mean
   embeddings on the embedding split (rounds 1..R-1, RSEA only), optionally protect them
   (``federation.privacy``: :mod:`fedamole.algorithms.fedamole_privacy`), upload.
3. ``aggregate`` (rounds 1..R-1 only: nothing after the last round): per expert id, the mean over
   its holders; shared expert and token projection over all clients (docs/algorithm.md#aggregation);
   then RSEA (or the ablation policy) computes next round's assignment.

Faults: an update that fails validation (missing module, wrong shape, non-finite value) is rejected
with a logged reason; a failed or rejected client is simply absent from the means. An expert whose
holders all failed keeps its previous weights. For RSEA a missing client reuses its last uploaded
token embeddings (or, before it ever uploaded, the mean of the other clients'); an expert without
fresh holder embeddings keeps its last ones.

Ablations (config flags): ``federation.assignment = "static"`` (FedAMoLE-R: round-0 random
assignment kept, no embeddings computed or sent), ``"random"`` (a fresh random assignment every
round), ``"oracle"`` (experts dealt to groups of clients whose partition categories overlap, kept:
the upper bound of what assignment can do, for benchmarks), ``federation.homogeneous`` (every
client holds about E*k_c/N experts), ``mole.shared_expert = false`` (FedAMoLE-S),
``mole.router = "linear"`` (FedAMoLE-H: a learned gate vector per expert).

**Diagnostics.** After every assignment the server logs (``server/rsea/...`` in ``metrics.jsonl``)
``affinity_spread``, ``retention``, and, when the engine knows the partition's categories per
client, ``group_purity`` with its chance level ``group_purity_chance``
(:func:`~fedamole.federated.groups.assignment_diagnostics` defines them).

**Three RSEA variants beyond the paper** (their defaults keep the paper's rule). Measured on
SmolLM2-135M with 4 clients in two pairs that share a task family, 3 local steps:

- ``mole.rsea_token_proj = "received"``: the uploaded mean token embedding is computed with the
  token projection the client received at the start of the round instead of the one it just
  trained. At lr 1e-3 local training moves that projection by ~4 %, more than the clients' mean
  layer inputs differ (~6 % of their norm: the prompt template is ~45 of ~55 tokens), so the
  paper's statistic mostly measures each client's training drift: the share of experts held by a
  same-family pair was 0.37-0.38 (chance 0.33); with the received projection, 0.96 (with the
  untrained weights 0.96-0.97, with the paper's lr 5e-5 0.85).
- ``mole.rsea_stats = "received"``: every statistic (the layer inputs' mean, the token and the
  expert embeddings) is computed on the model as the client received it, before local training.
  With only the token projection received, the expert embeddings and the deeper layers' inputs
  still carry each client's training drift, and on the paired benchmark (8 clients in 4 pairs,
  docs/results/rsea.md; 3 seeds) group purity fell from 0.87-0.89 after the first RSEA round to
  0.72-0.80 after the third; with the received model it stayed at 0.86-0.92 in every round (the
  paper's rule: 0.21-0.31; chance 0.14).
- ``mole.rsea_retention = b``: ``b`` is added to the affinity of each expert's current holders
  before solving, so an expert moves only when the gain exceeds ``b`` (the solve stays exact).
  The paper's RSEA has no memory: 51-56 % of expert-holder pairs survived a round, what a random
  re-draw keeps (50 %), so each round about half of a client's routed experts arrived trained on
  other clients' data, while FedAMoLE-R keeps its partners.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
    RoundSummary,
    RoundTemplate,
    client_round,
    client_stream,
    evaluated_round,
    phase_progress,
    screen_updates,
    train_examples,
)
from fedamole.algorithms.fedamole_privacy import (
    gaussian_stats,
    paper_noise,
    privacy_metrics,
    private_fold,
    update_privacy,
)
from fedamole.config import Config
from fedamole.data.collate import collate, encode_train
from fedamole.federated.aggregation import TensorSpec, check_update, spec_of
from fedamole.federated.assignment import Assignment, AssignmentPolicy
from fedamole.federated.expert_bank import ExpertBank
from fedamole.federated.groups import assignment_diagnostics, client_groups
from fedamole.federated.messages import (
    ClientMessage,
    ServerMessage,
    pack_modules,
    pack_stats,
    unpack_modules,
    unpack_stats,
)
from fedamole.mole import (
    ModuleState,
    balance_loss,
    embedding_stats,
    example_embedding_stats,
    get_mole_state,
    inject_mole,
    mole_modules,
    mole_parameters,
    set_mole_state,
)
from fedamole.training import local_train, model_inputs

__all__ = ["FedAMoLE", "client_mole_state"]

log = logging.getLogger(__name__)

# Fewer embedding examples than this get a warning: on the RSEA benchmark (docs/results/rsea.md)
# 3 per client gave a first-round group purity of 0.79, 12-16 gave 0.90-0.92.
MIN_EMBEDDING_EXAMPLES = 8

_STATE_KEY = "modules"  # where a client keeps its packed MoLE state in ``ctx.state``
_PRIVACY_METRICS = "privacy_metrics"  # ``ctx.cache``: this round's release, for the reply


def client_mole_state(state: Mapping[str, Any]) -> dict[str, ModuleState]:
    """A FedAMoLE client's MoLE modules, from its private state (``ctx.state``, or a
    checkpoint's ``clients[c]``), for export and analysis.

    Raises:
        KeyError: the state holds no MoLE modules (the client never received any).
    """
    if _STATE_KEY not in state:
        raise KeyError("the client state holds no MoLE modules (it never received experts)")
    return unpack_modules(state[_STATE_KEY])


class FedAMoLE(RoundTemplate):
    """The FedAMoLE algorithm (server state only; client state lives in :class:`ClientContext`)."""

    name = "fedamole"
    observes_partition = True  # the group-purity diagnostic and the "oracle" policy

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.num_clients = cfg.federation.num_clients
        m = cfg.mole
        self.policy = AssignmentPolicy(
            cfg.federation.assignment,
            m.num_experts,
            self.num_clients,
            per_expert=m.clients_per_expert,
            min_per_client=m.min_experts_per_client,
            max_per_client=m.max_experts_per_client,
            homogeneous=cfg.federation.homogeneous,
            retention=m.rsea_retention,
        )
        self.categories: list[frozenset[str]] | None = None  # per client, from the partition
        self.bank: ExpertBank | None = None
        self.shapes: dict[str, tuple[int, int]] = {}
        self.assignment: Assignment | None = None  # set by setup / load_state_dict
        self.rng = np.random.default_rng([cfg.run.seed, 1])
        self.dirty = True
        self.missed: set[int] = set()  # clients that gave no reply last round: resend their experts
        self.update_dp = update_privacy(cfg)  # privacy.updates = "gaussian", else None

    # ---------------------------------------------------------------------------------- server side

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        inject_mole(model, self.cfg.mole, generator=gen)
        return model

    def setup(self, model: PreTrainedModel) -> None:
        self.shapes = {
            name: (layer.base_layer.in_features, layer.base_layer.out_features)
            for name, layer in mole_modules(model).items()
        }
        gen = torch.Generator().manual_seed(self.cfg.run.seed + 1)
        self.bank = ExpertBank.initial(self.shapes, self.cfg.mole, generator=gen)
        groups = None if self.categories is None else client_groups(self.categories)
        self.assignment = self.policy.initial(self.shapes, rng=self.rng, groups=groups)

    def observe_partition(self, categories: list[frozenset[str]]) -> None:
        """The partition's categories per client (from the engine, where it knows them): for the
        group-purity diagnostic and the ``"oracle"`` policy. Call before :meth:`setup`."""
        if len(categories) != self.num_clients:
            raise ValueError(f"{len(categories)} category sets for {self.num_clients} clients")
        self.categories = [frozenset(c) for c in categories]

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        rounds = self.cfg.federation.rounds
        plan = RoundPlan(
            train=rnd > 0,
            upload=0 < rnd < rounds,
            lr=RoundPlan.for_round(self.cfg, rnd).lr,
            eval_personalized=evaluated_round(self.cfg, rnd),
            stats=0 < rnd < rounds and self.policy.needs_embeddings,
        )
        out = {}
        for client in range(self.num_clients):
            send = self.dirty or client in self.missed
            tensors = pack_modules(self._client_modules(client)) if send else {}
            out[client] = ServerMessage(rnd, client, tensors, plan.to_config())
        self.dirty, self.missed = False, set()
        return out

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        accepted, rejected = screen_updates(
            rnd, updates, self._check_update, weighted=self.cfg.federation.weighting == "examples"
        )
        self.missed = set(range(self.num_clients)) - set(updates)  # failed: may hold nothing
        if rnd == 0:  # the initial assignment's diagnostics
            info = {"metrics": self._diagnostics(self._assignment())}
            return RoundSummary(rnd, tuple(accepted), rejected, info)
        if not rnd < self.cfg.federation.rounds:
            return RoundSummary(rnd, tuple(accepted), rejected)
        bank, dp = self._bank(), {}
        if accepted:
            modules = {c: unpack_modules(m.tensors) for c, m in accepted.items() if m.tensors}
            if self.update_dp is not None:  # unweighted: validation refuses "examples" here
                dp = private_fold(self.update_dp, bank, modules, self._client_modules, rnd)
            elif self.cfg.federation.weighting == "examples":
                bank.fold(modules, {c: float(accepted[c].config["num_examples"]) for c in modules})
            else:
                bank.fold(modules, None)
            stats = {c: unpack_stats(m.tensors) for c, m in accepted.items()}
            bank.fold_embeddings(stats, self._assignment(), self.num_clients)
        previous = self._assignment()
        self.assignment, affinities = self._next_assignment()
        self.dirty = True
        info = {"metrics": {**self._diagnostics(self.assignment, previous, affinities), **dp}}
        return RoundSummary(rnd, tuple(accepted), rejected, info)

    def assignment_record(self) -> dict[str, Any]:
        return self._assignment().to_json()

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._bank().state_dict(),
            "assignment": dict(self._assignment().modules),
            "rng": _rng_state(self.rng),
            "dirty": self.dirty,
            "missed": sorted(self.missed),
            **({"update_dp": self.update_dp.state_dict()} if self.update_dp else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bank = ExpertBank.from_state_dict(state)
        self.assignment = Assignment(
            {k: np.asarray(v, dtype=bool) for k, v in state["assignment"].items()}
        )
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = json_to_rng_state(state["rng"])
        self.dirty = bool(state["dirty"])
        self.missed = {int(c) for c in state.get("missed", [])}  # absent before it existed
        if self.update_dp is not None:
            self.update_dp.load_state_dict(state["update_dp"])

    # ---------------------------------------------------------------------------------- client side

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        if job.msg.tensors:  # packed module states (see federated.messages)
            ctx.state[_STATE_KEY] = dict(job.msg.tensors)
        if _STATE_KEY not in ctx.state:
            raise RuntimeError(f"client {ctx.client_id} holds no experts and none were sent")
        modules = client_mole_state(ctx.state)
        set_mole_state(ctx.model, modules)
        if self.cfg.mole.rsea_token_proj == "received":  # what this round began with
            ctx.cache["received_token_proj"] = {
                name: st.token_proj.detach().clone() for name, st in modules.items()
            }
        ctx.cache.pop("received_stats", None)
        if job.plan.stats and self.cfg.mole.rsea_stats == "received":  # before local training
            ctx.cache["received_stats"] = self._embedding_stats(ctx)

    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        cfg = self.cfg
        stream = client_stream(ctx, cfg)
        coef = cfg.mole.balance_coef
        result = local_train(
            ctx.model,
            mole_parameters(ctx.model),
            stream,
            cfg.train,
            lr=job.plan.lr,
            pad_id=ctx.tokenizer.pad_token_id,
            balance=(lambda mask: balance_loss(ctx.model, coef=coef, token_mask=mask))
            if coef > 0
            else None,
            progress=ctx.progress,
        )
        ctx.state["stream"] = stream.state_dict()
        ctx.state[_STATE_KEY] = pack_modules(get_mole_state(ctx.model))
        return {
            "train/loss": result.loss,
            "train/balance": result.balance,
            "train/tokens": result.tokens,
            **result.step_metrics(),
        }

    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        if job.plan.upload:
            tensors.update(ctx.state[_STATE_KEY])
        if job.plan.stats:
            tensors.update(pack_stats(self._stats(ctx, job.rnd)))
        return tensors

    def local_update(self, rnd: int, msg: ServerMessage, ctx: ClientContext) -> ClientMessage:
        reply = client_round(self, rnd, msg, ctx)
        if self.cfg.federation.privacy != "gaussian":
            return reply
        found = ctx.cache.pop(_PRIVACY_METRICS, None) or privacy_metrics(self.cfg, ctx)
        return replace(reply, metrics={**reply.metrics, **found})

    def _stats(self, ctx: ClientContext, rnd: int) -> dict[str, Any]:
        stats = ctx.cache.pop("received_stats", None) or self._embedding_stats(ctx)
        privacy = self.cfg.federation.privacy
        if privacy == "gaussian":  # per-example rows: clip, average, noise, account
            stats, ctx.cache[_PRIVACY_METRICS] = gaussian_stats(self.cfg, ctx, rnd, stats)
        elif privacy == "paper":
            stats = paper_noise(self.cfg, ctx, rnd, stats)
        return stats

    def _embedding_stats(self, ctx: ClientContext) -> dict[str, Any]:
        """Mean token and expert embeddings of the model as it is now, on the embedding set (one
        row per example under the Gaussian mechanism, docs/privacy.md)."""
        encoded = [
            e
            for e in (
                encode_train(x, ctx.tokenizer, self.cfg.model.max_length)
                for x in ctx.data.embedding
            )
            if e is not None
        ]
        if len(encoded) < MIN_EMBEDDING_EXAMPLES and not ctx.cache.get("embedding_warned"):
            ctx.cache["embedding_warned"] = True
            data = self.cfg.data
            log.warning(
                "client %d: RSEA statistics from %d embedding example(s)%s (data.embedding_ratio "
                "= %g, data.embedding_cap = %d); with fewer than %d the assignment follows which "
                "examples were drawn more than the client's data "
                "(docs/results/rsea.md#the-embedding-set): raise data.embedding_ratio",
                ctx.client_id,
                len(encoded),
                "" if encoded else ", so one training example stands in",
                data.embedding_ratio,
                data.embedding_cap,
                MIN_EMBEDDING_EXAMPLES,
            )
        encoded = encoded or train_examples(ctx, self.cfg)[:1]
        bs, device = self.cfg.eval.batch_size, ctx.device
        batches = [
            model_inputs(collate(encoded[i : i + bs], ctx.tokenizer.pad_token_id), device)
            for i in range(0, len(encoded), bs)
        ]
        token_weights = None
        if self.cfg.mole.rsea_token_proj == "received":
            token_weights = ctx.cache["received_token_proj"]
        with phase_progress(ctx, "RSEA statistics", len(encoded)) as advance:

            def counted() -> Iterator[dict[str, torch.Tensor]]:
                for batch in batches:
                    yield batch
                    advance(len(batch["input_ids"]))

            per_example = self.cfg.federation.privacy == "gaussian"
            compute = example_embedding_stats if per_example else embedding_stats
            return compute(ctx.model, counted(), token_weights=token_weights)

    # ---------------------------------------------------------------------------------- helpers

    def _bank(self) -> ExpertBank:
        if self.bank is None:
            raise RuntimeError("FedAMoLE.setup (or load_state_dict) must run before the server")
        return self.bank

    def _assignment(self) -> Assignment:
        if self.assignment is None:
            raise RuntimeError("FedAMoLE.setup (or load_state_dict) must run before the server")
        return self.assignment

    def _next_assignment(self) -> tuple[Assignment, dict[str, np.ndarray] | None]:
        """The next assignment, and the affinities it was solved on (RSEA only)."""
        current, affinities = self._assignment(), None
        if self.policy.needs_embeddings:
            affinities = self._bank().affinities(self.num_clients)
            if affinities is None:
                log.warning("no RSEA embeddings received yet; keeping the current assignment")
                return current, None
        return self.policy.next(current, rng=self.rng, affinities=affinities), affinities

    def _diagnostics(
        self,
        current: Assignment,
        previous: Assignment | None = None,
        affinities: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """``rsea/...`` metrics of an assignment (see the module docstring)."""
        found = assignment_diagnostics(
            current, previous=previous, affinities=affinities, categories=self.categories
        )
        return {f"rsea/{key}": value for key, value in found.items()}

    def _client_modules(self, client: int) -> dict[str, ModuleState]:
        return self._bank().for_client(self._assignment(), client)

    def _check_update(self, client: int, msg: ClientMessage) -> list[str]:
        """Problems with an upload: missing/unexpected tensors, shapes, dtypes, NaN/Inf, ids."""
        if not msg.tensors:
            return []
        sent = pack_modules(self._client_modules(client))
        expected = spec_of(sent)
        if any(k.startswith("embeddings:") for k in msg.tensors):
            r = self.cfg.mole.rank
            for name in self.shapes:
                n = int(self._assignment().modules[name][:, client].sum())
                expected[f"embeddings:{name}:token"] = TensorSpec((r,), torch.float32)
                expected[f"embeddings:{name}:experts"] = TensorSpec((n, r), torch.float32)
        problems = check_update(msg.tensors, expected)
        for key, ids in sent.items():
            got = msg.tensors.get(key)
            if key.startswith("ids:") and got is not None and not torch.equal(got, ids):
                problems.append(f"{key}: {got.tolist()} are not the assigned ids {ids.tolist()}")
        return problems


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": {k: str(v) for k, v in state["state"].items()},
        "has_uint32": state["has_uint32"],
        "uinteger": state["uinteger"],
    }


def json_to_rng_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "bit_generator": state["bit_generator"],
        "state": {k: int(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }
