"""FedAMoLE's server-side store of experts and RSEA embeddings.

Per MoLE module the bank holds all ``E`` domain experts, the shared expert, the global token
projection (and the gate vectors of the linear-router ablation) as one
:class:`~fedamole.mole.ModuleState` with expert ids ``0..E-1``, so a client's share is
:meth:`ModuleState.select` of its assigned ids. Beside the weights it keeps what RSEA needs: each
expert's last mean embedding ``(E, r)`` per module, and each client's last mean token embedding.

Aggregation (:meth:`ExpertBank.fold`): each expert is averaged over the clients that uploaded it
(its holders); the token projection and the shared expert over every uploading client. An expert
that no accepted client uploaded keeps its weights, and its embedding keeps its last value.

Checkpoints keep the layout of earlier versions (``bank`` -> module -> ``A``/``B``/...), so runs
written before this module existed still resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedamole.config import MoLEConfig
from fedamole.federated.aggregation import aggregate_experts, aggregate_shared
from fedamole.federated.assignment import Assignment, affinity
from fedamole.mole.state import ModuleState, init_module_state

__all__ = ["ExpertBank"]

# checkpoint key of each ModuleState field (the layout written before the bank was typed)
_KEYS = {
    "lora_A": "A",
    "lora_B": "B",
    "token_proj": "token_proj",
    "shared_A": "shared_A",
    "shared_B": "shared_B",
    "gate": "gate",
}


@dataclass
class ExpertBank:
    """All experts of every module, and the RSEA embeddings.

    Attributes:
        modules: module name -> its experts (ids ``0..E-1``), shared expert and token projection.
        expert_emb: module name -> ``(E, r)`` last mean embedding of each expert.
        token_emb: client -> module name -> ``(r,)`` the client's last mean token embedding.
    """

    modules: dict[str, ModuleState]
    expert_emb: dict[str, Tensor]
    token_emb: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    @classmethod
    def initial(
        cls, shapes: Mapping[str, tuple[int, int]], cfg: MoLEConfig, *, generator: torch.Generator
    ) -> ExpertBank:
        """Round-0 weights, one initialization per expert id, drawn module by module in ``shapes``
        order.

        Args:
            shapes: module name -> ``(d_in, d_out)`` of the wrapped linear.
            cfg: experts, rank, shared expert, router.
            generator: the only source of randomness.
        """
        modules = {
            name: init_module_state(d_in, d_out, cfg, generator=generator)
            for name, (d_in, d_out) in shapes.items()
        }
        emb = {name: torch.zeros(cfg.num_experts, cfg.rank) for name in shapes}
        return cls(modules, emb)

    def for_client(self, assignment: Assignment, client: int) -> dict[str, ModuleState]:
        """Copies of the experts ``client`` is assigned in every module (never aliases)."""
        out = {}
        for name, bank in self.modules.items():
            ids = np.flatnonzero(assignment.modules[name][:, client])
            out[name] = _clone(bank.select(torch.as_tensor(ids, dtype=torch.long)))
        return out

    def fold(
        self,
        uploads: Mapping[int, Mapping[str, ModuleState]],
        weights: Mapping[int, float] | None = None,
    ) -> None:
        """Average the uploaded states into the bank (per expert among its holders).

        Args:
            uploads: client -> module name -> the client's trained state of that module.
            weights: optional client -> weight (``federation.weighting = "examples"``).
        """
        if not uploads:
            return
        for name, bank in self.modules.items():
            states = {c: up[name] for c, up in uploads.items()}
            (token_proj,) = aggregate_shared(
                {c: (s.token_proj,) for c, s in states.items()}, weights
            )
            shared_A, shared_B = bank.shared_A, bank.shared_B
            if shared_A is not None:
                shared_A, shared_B = aggregate_shared(
                    {c: (s.shared_A, s.shared_B) for c, s in states.items()}, weights
                )
            per_expert = {c: _expert_tensors(s) for c, s in states.items()}
            for e, tensors in aggregate_experts(per_expert, weights).items():
                bank.lora_A[e], bank.lora_B[e] = tensors[0], tensors[1]
                if bank.gate is not None:
                    bank.gate[e] = tensors[2]
            self.modules[name] = replace(
                bank, token_proj=token_proj, shared_A=shared_A, shared_B=shared_B
            )

    def fold_embeddings(
        self,
        uploads: Mapping[int, Mapping[str, tuple[Tensor, Tensor]]],
        assignment: Assignment,
        num_clients: int,
    ) -> None:
        """Record the RSEA statistics of a round.

        Each uploading client's token embedding replaces its last one; each expert's embedding
        becomes the mean over its holders' uploads. A client that has never uploaded gets the mean
        of the others' token embeddings as a neutral stand-in.

        Args:
            uploads: client -> module name -> ``(token (r,), experts (n, r))``, the experts in the
                order of the client's assigned ids.
            assignment: the assignment the statistics were computed under.
            num_clients: ``N``.
        """
        uploads = {c: u for c, u in uploads.items() if u}
        if not uploads:
            return
        for c, up in uploads.items():
            self.token_emb[c] = {name: tok.float() for name, (tok, _) in up.items()}
        for name in self.modules:
            rows_of: dict[int, list[Tensor]] = {}
            for c, up in uploads.items():
                ids = assignment.modules[name][:, c].nonzero()[0]
                for row, e in zip(up[name][1], ids, strict=True):
                    rows_of.setdefault(int(e), []).append(row.float())
            for e, rows in rows_of.items():
                self.expert_emb[name][e] = torch.stack(rows).mean(0)  # (r,)
        for c in range(num_clients):
            if c not in self.token_emb:
                self.token_emb[c] = {
                    name: torch.stack([self.token_emb[o][name] for o in uploads]).mean(0)
                    for name in self.modules
                }

    def affinities(self, num_clients: int) -> dict[str, np.ndarray] | None:
        """module name -> ``(E, N)`` affinity probabilities
        (:func:`~fedamole.federated.assignment.affinity`), or ``None`` before every client has a
        token embedding."""
        if len(self.token_emb) < num_clients:
            return None
        out = {}
        for name in self.modules:
            tokens = torch.stack([self.token_emb[c][name] for c in range(num_clients)])  # (N, r)
            out[name] = affinity(self.expert_emb[name].double().numpy(), tokens.double().numpy())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values for a checkpoint."""
        bank = {
            name: {
                key: value
                for attr, key in _KEYS.items()
                if (value := getattr(st, attr)) is not None
            }
            for name, st in self.modules.items()
        }
        return {"bank": bank, "expert_emb": self.expert_emb, "token_emb": self.token_emb}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ExpertBank:
        """Restore :meth:`state_dict`."""
        modules = {}
        for name, tensors in state["bank"].items():
            fields_ = {attr: tensors.get(key) for attr, key in _KEYS.items()}
            num = fields_["lora_A"].shape[0]
            modules[name] = ModuleState(expert_ids=torch.arange(num), **fields_)
        token_emb = {int(c): dict(v) for c, v in state["token_emb"].items()}
        return cls(modules, dict(state["expert_emb"]), token_emb)


def _clone(st: ModuleState) -> ModuleState:
    return ModuleState(
        **{k: None if (v := getattr(st, k)) is None else v.clone() for k in ("expert_ids", *_KEYS)}
    )


def _expert_tensors(st: ModuleState) -> dict[int, tuple[Tensor, ...]]:
    """Expert id -> ``(A, B[, gate])`` of one uploaded module state."""
    out = {}
    for pos, e in enumerate(st.expert_ids.tolist()):
        parts = (st.lora_A[pos], st.lora_B[pos])
        out[int(e)] = parts if st.gate is None else (*parts, st.gate[pos])
    return out
