"""The registrations' ``secure_kinds``, which SecAgg+ on the Flower engine relies on
(:mod:`fedamole.engines.flower.secagg`): the server only ever averages those tensors over every
accepted client. SecAgg+ hands the algorithm that mean in place of each client's own tensors; the
server must then end in exactly the state it reaches from the individual uploads."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from fedamole.algorithms.lora_common import select_parts
from fedamole.algorithms.registry import registry
from fedamole.federated.aggregation import average_tensors
from fedamole.federated.messages import ClientMessage, pack_modules

SECURED = sorted(name for name, spec in registry().items() if spec.secure_kinds)


def _uploads(algo, name: str) -> dict[int, ClientMessage]:
    """Round-1 uploads of every client, of the shapes the server expects, random values."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for client in range(algo.num_clients):
        if name == "fedamole":
            sent = pack_modules(algo._client_modules(client))
        elif name == "fedprompt":
            sent = algo.global_params
        else:
            sent = select_parts(algo.global_state, algo.shared_parts)
        tensors = {
            k: torch.randn(v.shape, generator=gen) * 0.1 if v.is_floating_point() else v.clone()
            for k, v in sent.items()
        }
        out[client] = ClientMessage(1, client, tensors, {"num_examples": 5 + 7 * client})
    return out


def _secured(
    updates: Mapping[int, ClientMessage], kinds: tuple[str, ...], weighted: bool
) -> dict[int, ClientMessage]:
    """``updates`` with every tensor of ``kinds`` replaced by its mean over all clients."""
    clients = sorted(updates)
    weights = [float(updates[c].config["num_examples"]) for c in clients] if weighted else None
    keys = [k for k in updates[clients[0]].tensors if k.split(":", 1)[0] in kinds]
    assert keys, "no tensor of the secure kinds is uploaded"
    means = {k: average_tensors([updates[c].tensors[k] for c in clients], weights) for k in keys}
    return {
        c: ClientMessage(m.round, m.client, {**m.tensors, **means}, m.config)
        for c, m in updates.items()
    }


def _same(a: Any, b: Any, path: str = "") -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k], f"{path}/{k}") for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) if not hasattr(a, "shape") else bool((a == b).all())


def _server_after(algo, updates) -> dict[str, Any]:
    algo = copy.deepcopy(algo)
    algo.configure_round(1)
    summary = algo.aggregate(1, updates)
    assert not summary.rejected
    return algo.state_dict()


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
@pytest.mark.parametrize("name", SECURED)
def test_secure_kinds_enter_only_a_mean_over_all_clients(make_algo, name, weighting):
    algo, _, _ = make_algo(name, **{"federation.weighting": weighting})
    algo.configure_round(0)
    updates = _uploads(algo, name)
    kinds = registry()[name].secure_kinds
    secured = _secured(updates, kinds, weighting == "examples")
    assert _same(_server_after(algo, updates), _server_after(algo, secured))


def test_the_check_catches_a_mean_over_groups(make_algo):
    """FedIT-clustered averages within clusters: the mean over all clients in place of each
    client's adapter changes its server state, so it must not (and does not) register them."""
    assert not registry()["fedit_clustered"].secure_kinds
    algo, _, _ = make_algo("fedit_clustered")
    algo.configure_round(0)
    updates = _uploads(algo, "fedit_clustered")
    secured = _secured(updates, ("lora_A", "lora_B"), False)
    assert not _same(_server_after(algo, updates), _server_after(algo, secured))
