"""FedLEASE's per-module router over the M cluster experts (docs/algorithm.md#fedlease).

Per LoRA module a client holds a bias-free float32 linear map ``R: d_in -> 2M - 1``. Slot
``s < M`` stands for expert ``s``; slots ``M .. 2M-2`` all stand for the client's own cluster
expert ``c``. Per token (:func:`route`)::

    p = softmax(R x)                          # (2M-1,)
    S = the M slots of largest p              # torch.topk
    w_s = p_s / sum_{t in S} p_t  (s in S)    # renormalized top-M weights
    g_e = sum_{s in S, slot(s) = e} w_s       # (M,) the experts' gates

so a client uses between 1 expert (its own one fills the top M) and all M, and
``y = W x + sum_e g_e (alpha/r) B_e A_e x``. Before the clustering (the warm-up) the router is
off and the layer is plain LoRA on adapter ``default``.

The experts are peft adapters (expert 0 is ``default``, expert k is ``expert<k>``); the routers
live beside the peft layers (``model.fedlease_routers``), a forward pre-hook on each
``LoraLayer`` computes the gates from the layer's input and forward hooks on each expert's
``lora_B`` scale its output (:func:`install_routers`), as FedALT's mixers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedamole.algorithms.lora_common import DEFAULT_ADAPTER, lora_layers

__all__ = [
    "ROUTERS",
    "Router",
    "expert_adapter",
    "install_routers",
    "route",
    "router_parameters",
    "router_state",
    "set_router_state",
    "slot_experts",
]

ROUTERS = "fedlease_routers"
"""The name of the model's submodule holding the routers."""


def expert_adapter(k: int) -> str:
    """The peft adapter name of cluster expert ``k``: ``default`` for 0, ``expert<k>`` else."""
    return DEFAULT_ADAPTER if k == 0 else f"expert{k}"


def slot_experts(num_experts: int, own: int) -> torch.Tensor:
    """The expert of each router slot: ``[0, 1, .., M-1, own, .., own]`` (2M-1,) int64."""
    return torch.tensor(list(range(num_experts)) + [own] * (num_experts - 1), dtype=torch.long)


def route(logits: torch.Tensor, own: int) -> torch.Tensor:
    """The experts' gates of adaptive top-M routing (module docstring).

    Args:
        logits: (..., 2M-1) router outputs.
        own: the client's cluster expert, ``0 <= own < M``.

    Returns:
        (..., M) gates, non-negative, summing to 1 per token.
    """
    num_experts = (logits.shape[-1] + 1) // 2
    probs = torch.softmax(logits, dim=-1)  # (..., 2M-1)
    top, slots = torch.topk(probs, num_experts, dim=-1)  # (..., M) each
    weights = top / top.sum(dim=-1, keepdim=True)  # (..., M) renormalized
    experts = slot_experts(num_experts, own).to(slots.device)[slots]  # (..., M) expert ids
    gates = torch.zeros_like(weights)  # (..., M) one column per expert
    return gates.scatter_add(-1, experts, weights)


class Router(nn.Module):
    """One module's router: ``weight`` (2M-1, d_in) float32 and the client's cluster ``own``;
    ``num_experts == 0`` (no weight) means off (warm-up)."""

    def __init__(self, d_in: int, device: torch.device):
        super().__init__()
        self.d_in, self.own = d_in, 0
        self.weight = nn.Parameter(torch.zeros(0, d_in, device=device), requires_grad=False)

    @property
    def num_experts(self) -> int:
        return (self.weight.shape[0] + 1) // 2

    def load(self, weight: torch.Tensor | None, own: int) -> None:
        """Set the weight ((2M-1, d_in), or ``None``: off) and the cluster (in place)."""
        value = torch.zeros(0, self.d_in) if weight is None else weight
        self.weight = nn.Parameter(
            value.to(self.weight.device, torch.float32, copy=True), requires_grad=False
        )
        self.own = own

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., M) gates of inputs (..., d_in)."""
        return route(x.to(self.weight.dtype) @ self.weight.T, self.own)  # (..., 2M-1) logits


def install_routers(model: nn.Module, num_adapters: int) -> nn.Module:
    """Attach an (off) router per ``LoraLayer`` and the hooks that gate its expert adapters
    ``expert_adapter(0 .. num_adapters-1)`` per token (in place); idempotent."""
    if hasattr(model, ROUTERS):
        return model
    routers = nn.ModuleDict()
    for name, layer in sorted(lora_layers(model).items()):
        device = layer.lora_A[DEFAULT_ADAPTER].weight.device
        router = Router(layer.in_features, device)
        routers[_key(name)] = router
        gates: dict[str, torch.Tensor] = {}
        layer.register_forward_pre_hook(_compute_gates(router, gates))
        for k in range(num_adapters):
            layer.lora_B[expert_adapter(k)].register_forward_hook(_gate(router, gates, k))
    model.add_module(ROUTERS, routers)
    return model


def _key(module: str) -> str:
    return module.replace(".", "/")


def _compute_gates(router: Router, gates: dict[str, torch.Tensor]):
    def hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
        if router.num_experts:
            gates["g"] = router.gates(args[0])  # (..., M)

    return hook


def _gate(router: Router, gates: dict[str, torch.Tensor], k: int):
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not router.num_experts:  # warm-up: plain LoRA
            return output
        return output * gates["g"][..., k : k + 1].to(output.dtype)

    return hook


def _routers(model: nn.Module) -> dict[str, Router]:
    """The model's routers by LoRA module name, sorted."""
    return {k.replace("/", "."): r for k, r in sorted(getattr(model, ROUTERS).items())}


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every router's weight, in sorted module order."""
    return [r.weight for r in _routers(model).values()]


def router_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached float32 CPU copies of the routers, keyed ``"router:<module>"`` (empty when off)."""
    routers = _routers(model)
    if not any(r.num_experts for r in routers.values()):
        return {}
    return {
        f"router:{name}": r.weight.detach().to("cpu", torch.float32, copy=True)
        for name, r in routers.items()
    }


def set_router_state(model: nn.Module, state: Mapping[str, torch.Tensor], own: int) -> None:
    """Load router weights and the client's cluster ``own`` (in place); an empty ``state``
    switches the routers off.

    Raises:
        KeyError: the keys differ from the model's routers.
        ValueError: a weight's shape is not (2M-1, d_in) for one M over all modules, or ``own``
            is not below M.
    """
    routers = {f"router:{name}": r for name, r in _routers(model).items()}
    if not state:
        for router in routers.values():
            router.load(None, 0)
        return
    if set(routers) != set(state):
        missing, extra = sorted(set(routers) - set(state)), sorted(set(state) - set(routers))
        raise KeyError(
            f"router state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    rows = {int(v.shape[0]) for v in state.values()}
    bad = [k for k, r in routers.items() if tuple(state[k].shape[1:]) != (r.d_in,)]
    if len(rows) != 1 or (next(iter(rows)) % 2 == 0) or bad:
        raise ValueError(f"router weights must all be (2M-1, d_in): rows {sorted(rows)}, {bad[:3]}")
    if not 0 <= own < (next(iter(rows)) + 1) // 2:
        raise ValueError(f"cluster {own} is not one of the {(next(iter(rows)) + 1) // 2} experts")
    for key, router in routers.items():
        router.load(state[key], own)
