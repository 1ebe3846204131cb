"""Per-module adapter state: the weights a client holds for one MoLE module
(docs/algorithm.md#what-is-shared).

A :class:`ModuleState` is what travels between server and client for one module: the held experts
(ids and stacked LoRA weights, plus gate vectors with the linear router), the shared expert and the
token projection. The server's store of all ``E`` experts of a module is a ``ModuleState`` too (ids
``0..E-1``); :meth:`ModuleState.select` cuts a client's subset out of it.

Initialization (docs/algorithm.md#initialization) draws from an explicit ``torch.Generator`` in a
fixed order: the routed experts' A ``(E, r, d_in)``, the shared expert's A, ``token_proj``, then the
gate vectors. Every A, ``token_proj`` and gate row is Kaiming-uniform with ``a = sqrt(5)`` (peft's
and ``nn.Linear``'s default: uniform on ``±1/sqrt(d_in)``); every B is zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fedamole.config import MoLEConfig
from fedamole.mole.layer import MoLELinear, mole_modules

__all__ = ["ModuleState", "get_mole_state", "init_module_state", "set_mole_state"]


@dataclass(frozen=True)
class ModuleState:
    """Adapter weights of one MoLE module.

    Attributes:
        expert_ids: ``(n,)`` long global ids of the routed experts.
        lora_A: ``(n, r, d_in)``.
        lora_B: ``(n, d_out, r)``.
        token_proj: ``(r, d_in)`` token projection ``W_tok``.
        shared_A: ``(r, d_in)``, or ``None`` without a shared expert.
        shared_B: ``(d_out, r)``, or ``None``.
        gate: ``(n, d_in)`` gate vectors with the linear router, else ``None``.
    """

    expert_ids: Tensor
    lora_A: Tensor
    lora_B: Tensor
    token_proj: Tensor
    shared_A: Tensor | None = None
    shared_B: Tensor | None = None
    gate: Tensor | None = None

    def __post_init__(self) -> None:
        n, r, d_in = self.lora_A.shape
        d_out = self.lora_B.shape[1]
        want = {
            "expert_ids": (n,),
            "lora_B": (n, d_out, r),
            "token_proj": (r, d_in),
            "shared_A": (r, d_in),
            "shared_B": (d_out, r),
            "gate": (n, d_in),
        }
        errors = [
            f"`{name}` has shape {tuple(value.shape)}, expected {shape}"
            for name, shape in want.items()
            if (value := getattr(self, name)) is not None and tuple(value.shape) != shape
        ]
        if (self.shared_A is None) != (self.shared_B is None):
            errors.append("`shared_A` and `shared_B` must both be set or both be None")
        if errors:
            raise ValueError("inconsistent ModuleState: " + "; ".join(errors))

    @property
    def num_experts(self) -> int:
        """Number of routed experts ``n``."""
        return self.expert_ids.shape[0]

    def select(self, expert_ids: Tensor | list[int]) -> ModuleState:
        """The state restricted to the given experts, in the given order (shared and token kept).

        Raises:
            KeyError: an id is not in this state.
        """
        wanted = torch.as_tensor(expert_ids, dtype=torch.long)
        position = {int(e): i for i, e in enumerate(self.expert_ids.tolist())}
        missing = [int(e) for e in wanted.tolist() if int(e) not in position]
        if missing:
            raise KeyError(f"expert ids {missing} are not held; available: {sorted(position)}")
        rows = torch.tensor([position[int(e)] for e in wanted.tolist()], dtype=torch.long)
        gate = None if self.gate is None else self.gate[rows]  # (n', d_in)
        return replace(
            self,
            expert_ids=wanted.clone(),
            lora_A=self.lora_A[rows],  # (n', r, d_in)
            lora_B=self.lora_B[rows],  # (n', d_out, r)
            gate=gate,
        )


def init_module_state(
    d_in: int,
    d_out: int,
    cfg: MoLEConfig,
    *,
    generator: torch.Generator,
    num_experts: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModuleState:
    """Initial weights of one module: experts ``0..num_experts-1``, shared expert, token projection.

    With the default ``num_experts = cfg.num_experts`` this is the server's initial store of the
    ``E + 1`` experts of a module (one init per expert id, copied to every holder).

    Args:
        d_in: input features of the wrapped linear.
        d_out: output features.
        cfg: rank, shared expert and router settings.
        generator: the only source of randomness; its device is where the tensors are drawn.
        num_experts: how many routed experts to create (default ``cfg.num_experts``).
        dtype: dtype of the returned tensors.

    Returns:
        A :class:`ModuleState` on the generator's device.
    """
    n = cfg.num_experts if num_experts is None else num_experts
    r = cfg.rank

    def kaiming(*shape: int) -> Tensor:
        bound = _kaiming_bound(d_in)
        out = torch.empty(shape, dtype=torch.float32, device=generator.device)
        return out.uniform_(-bound, bound, generator=generator).to(dtype)

    lora_A = kaiming(n, r, d_in)  # (n, r, d_in)
    shared_A = kaiming(r, d_in) if cfg.shared_expert else None  # (r, d_in)
    token_proj = kaiming(r, d_in)  # (r, d_in)
    gate = kaiming(n, d_in) if cfg.router == "linear" else None  # (n, d_in)
    zeros = {"dtype": dtype, "device": generator.device}
    return ModuleState(
        expert_ids=torch.arange(n, device=generator.device),
        lora_A=lora_A,
        lora_B=torch.zeros(n, d_out, r, **zeros),
        token_proj=token_proj,
        shared_A=shared_A,
        shared_B=torch.zeros(d_out, r, **zeros) if cfg.shared_expert else None,
        gate=gate,
    )


def get_mole_state(model: nn.Module) -> dict[str, ModuleState]:
    """Detached CPU copies of every MoLE module's adapter weights, keyed by module name (sorted)."""
    return {name: _read(module) for name, module in mole_modules(model).items()}


def set_mole_state(model: nn.Module, states: Mapping[str, ModuleState]) -> None:
    """Load per-module states; the number of experts may change per module (via ``set_experts``).

    ``shared_A``, ``shared_B`` and ``token_proj`` are copied in place; the experts become new
    Parameters, so build optimizers after this call.

    Raises:
        KeyError: the module names differ from the model's MoLE modules.
        ValueError: a shape does not match, or the shared expert / router kind differs.
    """
    modules = mole_modules(model)
    missing, extra = sorted(set(modules) - set(states)), sorted(set(states) - set(modules))
    if missing or extra:
        raise KeyError(
            f"state does not match the model's MoLE modules: missing {missing}, extra {extra}"
        )
    # Check everything before loading anything, so a bad state leaves the model untouched.
    errors = [f"{name}: {e}" for name, m in modules.items() for e in _mismatches(m, states[name])]
    if errors:
        raise ValueError("state does not fit the model:\n  " + "\n  ".join(errors))
    for name, module in modules.items():
        _load(module, states[name])


def _kaiming_bound(fan_in: int) -> float:
    """``kaiming_uniform_(a=sqrt(5))``: ``gain * sqrt(3 / fan_in)`` with ``gain = sqrt(2 / 6)``."""
    return math.sqrt(2.0 / (1 + 5.0)) * math.sqrt(3.0 / fan_in)


def _read(module: MoLELinear) -> ModuleState:
    def copy(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to("cpu", copy=True)

    return ModuleState(
        expert_ids=copy(module.expert_ids),
        lora_A=copy(module.lora_A),
        lora_B=copy(module.lora_B),
        token_proj=copy(module.token_proj.weight),
        shared_A=copy(module.shared_A),
        shared_B=copy(module.shared_B),
        gate=copy(module.gate),
    )


def _mismatches(module: MoLELinear, state: ModuleState) -> list[str]:
    """Why ``state`` cannot be loaded into ``module`` (empty when it can)."""
    d_in, d_out, r = module.base_layer.in_features, module.base_layer.out_features, module.rank
    n = state.num_experts
    errors = []
    if (state.shared_A is None) != (module.shared_A is None):
        errors.append(
            f"shared expert mismatch: the layer has one = {module.shared_A is not None}, "
            f"the state has one = {state.shared_A is not None}"
        )
    if module.router == "linear" and state.gate is None:
        errors.append("the layer's router is 'linear' but the state has no `gate`")
    if module.router != "linear" and state.gate is not None:
        errors.append(f"the state has a `gate` but the layer's router is {module.router!r}")
    if tuple(state.lora_A.shape) != (n, r, d_in):
        errors.append(f"`lora_A` has shape {tuple(state.lora_A.shape)}, expected {(n, r, d_in)}")
    if tuple(state.lora_B.shape) != (n, d_out, r):
        errors.append(f"`lora_B` has shape {tuple(state.lora_B.shape)}, expected {(n, d_out, r)}")
    if n < module.top_k:
        errors.append(f"{n} experts held, fewer than `top_k` ({module.top_k})")
    return errors


def _load(module: MoLELinear, state: ModuleState) -> None:
    module.set_experts(state.expert_ids, state.lora_A, state.lora_B, gate=state.gate)
    in_place = [(module.token_proj.weight, state.token_proj)]
    if module.shared_A is not None:
        in_place += [(module.shared_A, state.shared_A), (module.shared_B, state.shared_B)]
    with torch.no_grad():
        for param, value in in_place:
            param.copy_(value)
