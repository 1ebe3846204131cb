"""FedIT-clustered: FedIT averaged within known groups of related clients (a benchmark baseline,
docs/algorithm.md#fedit-clustered).

The upper bound of collaboration with known groups, as IFCA (Ghosh et al., NeurIPS 2020) would
reach with oracle clusters. The clients are grouped as FedAMoLE-Oracle groups them: the connected
components of "their partition categories overlap" (``federated.groups.client_groups``).
FedIT (:mod:`~.fedit`) runs inside each group: every client trains the whole adapter from its
group's model, and the server averages A and B over the group's clients that replied. No update
ever crosses a group, so a client gains from its own group's data and is never pulled towards an
unrelated one. All groups start from one adapter drawn from ``run.seed``.

It needs the partition, which no real deployment has: it exists to tell what the best grouping
is worth on a benchmark (docs/results/collaboration.md). Its product is each group's model as a
client fine-tuned it (the personalized metric, ``eval.timing = "personalized"``); with
``"global"`` or ``"both"`` the received model is the client's group model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedamole.algorithms.base import RoundPlan
from fedamole.algorithms.fedit import FedIT
from fedamole.algorithms.lora_common import select_parts
from fedamole.config import Config
from fedamole.federated.groups import client_groups
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = ["FedITClustered"]


class FedITClustered(FedIT):
    """FedAvg of a whole LoRA adapter within each group of related clients."""

    name = "fedit_clustered"
    observes_partition = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.groups: list[list[int]] | None = None  # from observe_partition
        self.group_states: list[dict[str, torch.Tensor]] = []  # each group's adapter

    def observe_partition(self, categories: list[frozenset[str]]) -> None:
        """Group the clients by overlapping partition categories. Call before :meth:`setup`."""
        if len(categories) != self.num_clients:
            raise ValueError(f"{len(categories)} category sets for {self.num_clients} clients")
        self.groups = client_groups(categories)

    def setup(self, model: Any) -> None:
        if self.groups is None:
            raise RuntimeError(
                "fedit_clustered needs each client's partition categories before setup "
                "(observe_partition); this engine did not provide them"
            )
        super().setup(model)
        self.group_states = [
            {k: v.clone() for k, v in self.global_state.items()} for _ in self.groups
        ]

    def group_of(self, client: int) -> int:
        """The index of the group that holds ``client``."""
        assert self.groups is not None
        return next(g for g, members in enumerate(self.groups) if client in members)

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        config = RoundPlan.for_round(self.cfg, rnd).to_config()
        first, changed = not self.initialized, self.dirty
        self.initialized, self.dirty = True, False
        missed, self.missed = self.missed, set()
        out = {}
        for client in range(self.num_clients):
            state = self.group_states[self.group_of(client)]
            if first or client in missed:  # the whole adapter: the start, or a missed broadcast
                tensors = dict(state)
            elif changed:
                tensors = select_parts(state, self.shared_parts)
            else:
                tensors = {}
            out[client] = ServerMessage(rnd, client, tensors, config)
        return out

    def merge(self, accepted: Mapping[int, ClientMessage]) -> None:
        """Average the uploads within each group; a group with no reply keeps its model."""
        assert self.groups is not None
        for g, members in enumerate(self.groups):
            mine = {c: accepted[c] for c in members if c in accepted}
            if mine:
                self.group_states[g].update(self._average(mine))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "groups": self.groups, "group_states": self.group_states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        saved = [list(map(int, g)) for g in state["groups"]]
        if self.groups is not None and saved != self.groups:
            raise ValueError(
                f"the checkpoint's client groups {saved} differ from this partition's "
                f"{self.groups}: the data or partition settings changed; start a new run"
            )
        self.groups = saved
        self.group_states = [dict(s) for s in state["group_states"]]
