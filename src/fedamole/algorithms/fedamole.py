"""FedAMoLE (SPEC.md sections 1, 3 and 4): heterogeneous mixtures of LoRA experts with RSEA.

Server state, per MoLE module: the expert bank (all E domain experts, the shared expert, the global
token projection, and gate vectors for the linear-router ablation), the current assignment, and the
last known RSEA embeddings. Each round:

1. ``configure_round``: every client gets the weights of the experts it is assigned (plus shared
   expert and token projection) whenever the bank changed since the last dispatch (round 0 and after
   every aggregation); otherwise it continues with what it holds.
2. ``local_update`` (on the client): load, train (rounds >= 1), evaluate on the test split right
   after training (the personalized metric, SPEC.md 1), compute mean embeddings on the embedding
   split (rounds 1..R-1, RSEA only), optionally add privacy noise, upload.
3. ``aggregate`` (rounds 1..R-1 only: nothing after the last round): per expert id, the mean over
   its holders; shared expert and token projection over all clients (SPEC.md 3.3); then RSEA (or the
   ablation policy) computes next round's assignment.

Faults: an update that fails validation (missing module, wrong shape, non-finite value) is rejected
with a logged reason; a failed or rejected client is simply absent from the means. An expert whose
holders all failed keeps its previous weights. For RSEA a missing client reuses its last uploaded
token embeddings (or, before it ever uploaded, the mean of the other clients'); an expert without
fresh holder embeddings keeps its last ones.

Ablations (config flags): ``federation.assignment = "static"`` (FedAMoLE-R: round-0 random
assignment kept, no embeddings computed or sent), ``"random"`` (a fresh random assignment every
round), ``federation.homogeneous`` (every client holds about E*k_c/N experts),
``mole.shared_expert = false`` (FedAMoLE-S), ``mole.router = "linear"`` (FedAMoLE-H: a learned gate
vector per expert).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    RoundSummary,
    client_seed,
    eval_loss,
    evaluate_test,
    train_examples,
)
from fedamole.config import Config
from fedamole.data.collate import collate, encode_train
from fedamole.federated.aggregation import (
    TensorSpec,
    aggregate_experts,
    aggregate_shared,
    check_update,
    spec_of,
)
from fedamole.federated.assignment import (
    Assignment,
    affinity,
    homogeneous_bounds,
    random_assignment,
    solve_assignment,
)
from fedamole.federated.messages import (
    ClientMessage,
    ServerMessage,
    pack_modules,
    pack_stats,
    unpack_modules,
    unpack_stats,
)
from fedamole.federated.privacy import NormClipper, privatize
from fedamole.mole import (
    ModuleState,
    balance_loss,
    embedding_stats,
    get_mole_state,
    init_module_state,
    inject_mole,
    mole_modules,
    mole_parameters,
    set_mole_state,
)
from fedamole.training import BatchStream, local_train, model_inputs, round_lr

__all__ = ["FedAMoLE"]

log = logging.getLogger(__name__)


class FedAMoLE:
    """The FedAMoLE algorithm (server state only; client state lives in :class:`ClientContext`)."""

    name = "fedamole"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.num_clients = cfg.federation.num_clients
        self.bank: dict[str, dict[str, torch.Tensor]] = {}
        self.shapes: dict[str, tuple[int, int]] = {}
        self.assignment: dict[str, np.ndarray] = {}
        self.expert_emb: dict[str, torch.Tensor] = {}  # module -> (E, r)
        self.token_emb: dict[int, dict[str, torch.Tensor]] = {}  # client -> module -> (r,)
        self.rng = np.random.default_rng([cfg.run.seed, 1])
        self.dirty = True

    # ---------------------------------------------------------------------------------- server side

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        inject_mole(model, self.cfg.mole, generator=gen)
        return model

    def setup(self, model: PreTrainedModel) -> None:
        m, gen = self.cfg.mole, torch.Generator().manual_seed(self.cfg.run.seed + 1)
        for name, layer in mole_modules(model).items():
            d_in, d_out = layer.base_layer.in_features, layer.base_layer.out_features
            self.shapes[name] = (d_in, d_out)
            init = init_module_state(d_in, d_out, m, generator=gen)
            bank = {"A": init.lora_A, "B": init.lora_B, "token_proj": init.token_proj}
            if init.shared_A is not None:
                bank["shared_A"], bank["shared_B"] = init.shared_A, init.shared_B
            if init.gate is not None:
                bank["gate"] = init.gate
            self.bank[name] = bank
            self.expert_emb[name] = torch.zeros(m.num_experts, m.rank)
        self.assignment = {name: self._random(name) for name in self.shapes}

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        rounds, policy = self.cfg.federation.rounds, self.cfg.federation.assignment
        config = {
            "train": rnd > 0,
            "lr": round_lr(self.cfg.train.lr, self.cfg.train.lr_decay, rnd),
            "upload": 0 < rnd < rounds,
            "stats": 0 < rnd < rounds and policy == "rsea",
        }
        out = {}
        for client in range(self.num_clients):
            tensors = pack_modules(self._client_modules(client)) if self.dirty else {}
            out[client] = ServerMessage(rnd, client, tensors, config)
        self.dirty = False
        return out

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        accepted, rejected = {}, {}
        for client, msg in sorted(updates.items()):
            problems = self._check_update(client, msg)
            if problems:
                rejected[client] = "; ".join(problems)
                log.warning("round %d: rejected client %d: %s", rnd, client, rejected[client])
            else:
                accepted[client] = msg
        if not 0 < rnd < self.cfg.federation.rounds:
            return RoundSummary(rnd, tuple(accepted), rejected)
        if accepted:
            self._average(accepted)
            self._update_embeddings(accepted)
        for name in self.shapes:
            self.assignment[name] = self._next_assignment(name)
        self.dirty = True
        return RoundSummary(rnd, tuple(accepted), rejected)

    def assignment_record(self) -> dict[str, Any]:
        return Assignment(self.assignment).to_json()

    def state_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "assignment": self.assignment,
            "expert_emb": self.expert_emb,
            "token_emb": self.token_emb,
            "rng": _rng_state(self.rng),
            "dirty": self.dirty,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bank = {k: dict(v) for k, v in state["bank"].items()}
        self.assignment = {k: np.asarray(v, dtype=bool) for k, v in state["assignment"].items()}
        self.expert_emb = dict(state["expert_emb"])
        self.token_emb = {int(c): dict(v) for c, v in state["token_emb"].items()}
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = json_to_rng_state(state["rng"])
        self.dirty = bool(state["dirty"])

    # ---------------------------------------------------------------------------------- client side

    def local_update(self, rnd: int, msg: ServerMessage, ctx: ClientContext) -> ClientMessage:
        cfg, model = self.cfg, ctx.model
        if msg.tensors:  # packed module states (see federated.messages)
            ctx.state["modules"] = dict(msg.tensors)
        if "modules" not in ctx.state:
            raise RuntimeError(f"client {ctx.client_id} holds no experts and none were sent")
        set_mole_state(model, unpack_modules(ctx.state["modules"]))
        torch.manual_seed(client_seed(cfg.run.seed, rnd, ctx.client_id))
        metrics: dict[str, float] = {}
        if msg.config["train"]:
            metrics.update(self._train(ctx, float(msg.config["lr"])))
        ctx.state["modules"] = pack_modules(get_mole_state(model))
        metrics.update(self._evaluate(ctx))
        tensors: dict[str, torch.Tensor] = {}
        if msg.config["upload"]:
            tensors.update(ctx.state["modules"])
        if msg.config["stats"]:
            tensors.update(pack_stats(self._stats(ctx, rnd)))
        config = {"num_examples": len(ctx.data.train)}
        return ClientMessage(rnd, ctx.client_id, tensors, config, metrics)

    def _train(self, ctx: ClientContext, lr: float) -> dict[str, float]:
        cfg = self.cfg
        stream = _stream(ctx, cfg)
        coef = cfg.mole.balance_coef
        result = local_train(
            ctx.model,
            mole_parameters(ctx.model),
            stream,
            cfg.train,
            lr=lr,
            pad_id=ctx.tokenizer.pad_token_id,
            balance=(lambda mask: balance_loss(ctx.model, coef=coef, token_mask=mask))
            if coef > 0
            else None,
            progress=ctx.cache.get("progress"),
        )
        ctx.state["stream"] = stream.state_dict()
        return {
            "train/loss": result.loss,
            "train/balance": result.balance,
            "train/tokens": result.tokens,
        }

    def _evaluate(self, ctx: ClientContext) -> dict[str, float]:
        out = {f"test/{k}": v for k, v in evaluate_test(ctx, self.cfg).items()}
        if ctx.data.eval:
            out["eval/loss"] = eval_loss(ctx, self.cfg)
        return out

    def _stats(self, ctx: ClientContext, rnd: int) -> dict[str, Any]:
        encoded = [
            e
            for e in (
                encode_train(x, ctx.tokenizer, self.cfg.model.max_length)
                for x in ctx.data.embedding
            )
            if e is not None
        ] or train_examples(ctx, self.cfg)[:1]
        bs, device = self.cfg.eval.batch_size, ctx.device
        batches = [
            model_inputs(collate(encoded[i : i + bs], ctx.tokenizer.pad_token_id), device)
            for i in range(0, len(encoded), bs)
        ]
        stats = embedding_stats(ctx.model, batches)
        if not self.cfg.federation.privacy:
            return stats
        return self._privatize(ctx, rnd, stats)

    def _privatize(self, ctx: ClientContext, rnd: int, stats: dict[str, Any]) -> dict[str, Any]:
        rng = np.random.default_rng(client_seed(self.cfg.run.seed + 2, rnd, ctx.client_id))
        clipper = NormClipper()
        if "clipper" in ctx.state:
            clipper.load_state_dict(ctx.state["clipper"])
        out = {}
        for name, st in stats.items():
            vec = torch.cat([st.token[None], st.experts]).double().numpy()  # (1+n, r)
            clip = clipper.update(vec, key=name)
            noisy = privatize(vec, eta=self.cfg.federation.privacy_eta, rng=rng, clip_norm=clip)
            noisy_t = torch.from_numpy(noisy).to(st.token.dtype)
            out[name] = type(st)(**{**st.__dict__, "token": noisy_t[0], "experts": noisy_t[1:]})
        ctx.state["clipper"] = clipper.state_dict()
        return out

    # ---------------------------------------------------------------------------------- helpers

    def _random(self, name: str) -> np.ndarray:
        m = self.cfg.mole
        lo, hi = self._bounds()
        return random_assignment(
            m.num_experts,
            self.num_clients,
            rng=self.rng,
            per_expert=m.clients_per_expert,
            min_per_client=lo,
            max_per_client=hi,
        )

    def _bounds(self) -> tuple[int, int]:
        m = self.cfg.mole
        if self.cfg.federation.homogeneous:
            return homogeneous_bounds(m.num_experts, self.num_clients, m.clients_per_expert)
        return m.min_experts_per_client, m.max_experts_per_client

    def _next_assignment(self, name: str) -> np.ndarray:
        policy = self.cfg.federation.assignment
        if policy == "static":
            return self.assignment[name]
        if policy == "random":
            return self._random(name)
        if len(self.token_emb) < self.num_clients:  # no client has uploaded embeddings yet
            log.warning("no RSEA embeddings received yet; keeping the current assignment")
            return self.assignment[name]
        tokens = torch.stack([self.token_emb[c][name] for c in range(self.num_clients)])  # (N, r)
        probs = affinity(self.expert_emb[name].double().numpy(), tokens.double().numpy())  # (E, N)
        lo, hi = self._bounds()
        return solve_assignment(
            probs, per_expert=self.cfg.mole.clients_per_expert, min_per_client=lo, max_per_client=hi
        )

    def _client_modules(self, client: int) -> dict[str, ModuleState]:
        out = {}
        for name, bank in self.bank.items():
            ids = np.flatnonzero(self.assignment[name][:, client])
            idx = torch.as_tensor(ids, dtype=torch.long)
            out[name] = ModuleState(
                expert_ids=idx.clone(),
                lora_A=bank["A"][idx].clone(),
                lora_B=bank["B"][idx].clone(),
                shared_A=_maybe(bank, "shared_A"),
                shared_B=_maybe(bank, "shared_B"),
                token_proj=bank["token_proj"].clone(),
                gate=bank["gate"][idx].clone() if "gate" in bank else None,
            )
        return out

    def _check_update(self, client: int, msg: ClientMessage) -> list[str]:
        """Problems with an upload: missing/unexpected tensors, shapes, dtypes, NaN/Inf, ids."""
        if not msg.tensors:
            return []
        sent = pack_modules(self._client_modules(client))
        expected = spec_of(sent)
        if any(k.startswith("embeddings:") for k in msg.tensors):
            r = self.cfg.mole.rank
            for name in self.shapes:
                n = int(self.assignment[name][:, client].sum())
                expected[f"embeddings:{name}:token"] = TensorSpec((r,), torch.float32)
                expected[f"embeddings:{name}:experts"] = TensorSpec((n, r), torch.float32)
        problems = check_update(msg.tensors, expected)
        for key, ids in sent.items():
            got = msg.tensors.get(key)
            if key.startswith("ids:") and got is not None and not torch.equal(got, ids):
                problems.append(f"{key}: {got.tolist()} are not the assigned ids {ids.tolist()}")
        return problems

    def _average(self, accepted: Mapping[int, ClientMessage]) -> None:
        """Per expert id over its holders; token projection and shared expert over all clients."""
        uploads = {c: unpack_modules(m.tensors) for c, m in accepted.items() if m.tensors}
        if not uploads:
            return
        weights = None
        if self.cfg.federation.weighting == "examples":
            weights = {c: float(accepted[c].config["num_examples"]) for c in uploads}
        for name, bank in self.bank.items():
            states = {c: up[name] for c, up in uploads.items()}
            (bank["token_proj"],) = aggregate_shared(
                {c: (st.token_proj,) for c, st in states.items()}, weights
            )
            if "shared_A" in bank:
                bank["shared_A"], bank["shared_B"] = aggregate_shared(
                    {c: (st.shared_A, st.shared_B) for c, st in states.items()}, weights
                )
            per_expert = {c: _expert_tensors(st) for c, st in states.items()}
            for e, tensors in aggregate_experts(per_expert, weights).items():
                bank["A"][e], bank["B"][e] = tensors[0], tensors[1]
                if "gate" in bank:
                    bank["gate"][e] = tensors[2]

    def _update_embeddings(self, accepted: Mapping[int, ClientMessage]) -> None:
        uploads = {c: unpack_stats(m.tensors) for c, m in accepted.items()}
        uploads = {c: u for c, u in uploads.items() if u}
        if not uploads:
            return
        for c, up in uploads.items():
            self.token_emb[c] = {name: tok.float() for name, (tok, _) in up.items()}
        for name in self.shapes:
            sums: dict[int, list[torch.Tensor]] = {}
            for c, up in uploads.items():
                ids = self.assignment[name][:, c].nonzero()[0]
                for row, e in zip(up[name][1], ids, strict=True):
                    sums.setdefault(int(e), []).append(row.float())
            for e, rows in sums.items():
                self.expert_emb[name][e] = torch.stack(rows).mean(0)
        missing = [c for c in range(self.num_clients) if c not in self.token_emb]
        for c in missing:  # never uploaded yet: a neutral stand-in
            self.token_emb[c] = {
                name: torch.stack([self.token_emb[o][name] for o in uploads]).mean(0)
                for name in self.shapes
            }


def _expert_tensors(st: ModuleState) -> dict[int, tuple[torch.Tensor, ...]]:
    """Expert id -> (A, B[, gate]) of one uploaded module state."""
    out = {}
    for pos, e in enumerate(st.expert_ids.tolist()):
        parts = (st.lora_A[pos], st.lora_B[pos])
        out[int(e)] = parts if st.gate is None else (*parts, st.gate[pos])
    return out


def _maybe(bank: Mapping[str, torch.Tensor], key: str) -> torch.Tensor | None:
    return bank[key].clone() if key in bank else None


def _stream(ctx: ClientContext, cfg: Config) -> BatchStream:
    stream = BatchStream(train_examples(ctx, cfg), seed=cfg.run.seed, client=ctx.client_id)
    if "stream" in ctx.state:
        stream.load_state_dict(ctx.state["stream"])
    return stream


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
