"""FedALT (Bian et al., AAAI 2026): an individual LoRA each client keeps, a frozen rest-of-world
LoRA from the others, and a per-token mixer of the two (docs/algorithm.md#fedalt).

Per target module a client holds

- its **individual** LoRA (peft adapter ``default``): trained by it, uploaded, never overwritten
  by the server;
- a **rest-of-world** (RoW) LoRA (adapter ``row``): frozen during local training, replaced by
  what the server sends;
- a **mixer** (a bias-free linear ``d_in -> 2``, float32, kept local): per token
  ``g = softmax(M x)`` weighs the two adapters, dense (both always active):
  ``y = W x + g_1 (alpha/r) B_ind A_ind x + g_2 (alpha/r) B_row A_row x``.

The server keeps each client's last accepted upload of its individual A and B and sends client
``i`` the factor-wise, unweighted mean of the OTHER clients' uploads (a client absent this round
contributes its last upload; one that never uploaded, nothing). Round 1's RoW is zero. Every
individual LoRA starts from the adapter drawn from ``run.seed`` (as local-only's, drawn by each
client); the mixers start at zero (equal weights, 1/2 each).

The mixers live beside the peft layers (``model.fedalt_mixers``); a forward pre-hook on each
``LoraLayer`` computes the gates from the layer's input and forward hooks on the two adapters'
``lora_B`` scale their outputs (:func:`install_mixers`), so training, evaluation and export use
peft's own LoRA forward unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
    RoundSummary,
    screen_updates,
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
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = [
    "MIXER",
    "ROW_ADAPTER",
    "FedALT",
    "install_mixers",
    "mixer_parameters",
    "mixer_state",
    "rest_of_world",
    "set_mixer_state",
]

ROW_ADAPTER = "row"
"""The peft adapter name of the rest-of-world LoRA."""

MIXER = "fedalt_mixers"
"""The name of the model's submodule holding the mixers."""


class FedALT(LoRAStrategy):
    """Individual LoRA + frozen rest-of-world LoRA + per-token mixer."""

    name = "fedalt"
    adapters = (DEFAULT_ADAPTER, ROW_ADAPTER)

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.uploads: dict[int, dict[str, torch.Tensor]] = {}  # each client's last accepted one

    # ---------------------------------------------------------------------------------- server side

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        return install_mixers(install_lora(model, self.cfg.baselines, self.adapters))

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        config = RoundPlan.for_round(self.cfg, rnd).to_config()
        changed, self.dirty = self.dirty, False
        self.initialized = True
        missed, self.missed = self.missed, set()
        out = {}
        for client in range(self.num_clients):
            tensors = {}
            if changed or client in missed:
                tensors = rest_of_world(self.uploads, client)
            out[client] = ServerMessage(rnd, client, tensors, config)
        return out

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        upload = RoundPlan.for_round(self.cfg, rnd).upload
        expected = spec_of(self.global_state) if upload else {}
        accepted, rejected = screen_updates(
            rnd, updates, lambda c, msg: check_update(msg.tensors, expected), weighted=False
        )
        self.missed = set(range(self.num_clients)) - set(updates)
        if upload and accepted:
            for client, msg in accepted.items():
                self.uploads[client] = {k: v.clone() for k, v in msg.tensors.items()}
            self.dirty = True
        return RoundSummary(rnd, tuple(accepted), rejected)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "uploads": self.uploads}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.uploads = {int(c): dict(u) for c, u in state["uploads"].items()}

    # ---------------------------------------------------------------------------------- client side

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        own, row = state_key(DEFAULT_ADAPTER), state_key(ROW_ADAPTER)
        if own not in ctx.state:  # every client starts from the adapter drawn from run.seed
            gen = torch.Generator().manual_seed(self.cfg.run.seed)
            ctx.state[own] = initial_lora_state(ctx.model, generator=gen)
        if job.msg.tensors:
            ctx.state[row] = {k: v.clone() for k, v in job.msg.tensors.items()}
        elif row not in ctx.state:  # round 1: the rest of the world is zero
            ctx.state[row] = {k: torch.zeros_like(v) for k, v in ctx.state[own].items()}
        if "mixer" not in ctx.state:
            ctx.state["mixer"] = {k: torch.zeros_like(v) for k, v in mixer_state(ctx.model).items()}
        set_lora_state(ctx.model, ctx.state[own], DEFAULT_ADAPTER)
        set_lora_state(ctx.model, ctx.state[row], ROW_ADAPTER)
        set_mixer_state(ctx.model, ctx.state["mixer"])

    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        params = lora_parameters(ctx.model, DEFAULT_ADAPTER) + mixer_parameters(ctx.model)
        result = train_adapter(ctx, self.cfg, params, lr=job.plan.lr)
        ctx.state[state_key(DEFAULT_ADAPTER)] = lora_state(ctx.model, DEFAULT_ADAPTER)
        ctx.state["mixer"] = mixer_state(ctx.model)
        return {"train/loss": result.loss, "train/tokens": result.tokens, **result.step_metrics()}

    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        if not job.plan.upload:
            return {}
        return dict(ctx.state[state_key(DEFAULT_ADAPTER)])


def rest_of_world(
    uploads: Mapping[int, Mapping[str, torch.Tensor]], client: int
) -> dict[str, torch.Tensor]:
    """The factor-wise, unweighted mean of every other client's last upload (empty when no other
    client has uploaded)."""
    others = [uploads[c] for c in sorted(uploads) if c != client]
    if not others:
        return {}
    return {k: average_tensors([u[k] for u in others], None) for k in sorted(others[0])}


# ---------------------------------------------------------------------------------- the mixers


def install_mixers(
    model: nn.Module, adapters: tuple[str, str] = (DEFAULT_ADAPTER, ROW_ADAPTER)
) -> nn.Module:
    """Attach a zero-initialized float32 mixer (``d_in -> 2``, no bias) per ``LoraLayer`` and the
    hooks that gate its two ``adapters`` per token (in place): ``g_1`` the first's, ``g_2`` the
    second's (FedALT's ``default`` and ``row``; pFedMoE's shared and local experts).

    The mixers live in ``model.fedalt_mixers`` (an ``nn.ModuleDict`` keyed by the layer's name,
    dots written ``/``), outside the peft layers, so peft's adapter state never includes them.
    """
    if hasattr(model, MIXER):
        return model
    mixers = nn.ModuleDict()
    for name, layer in sorted(lora_layers(model).items()):
        device = layer.lora_A[DEFAULT_ADAPTER].weight.device
        mixer = nn.Linear(layer.in_features, 2, bias=False, device=device, dtype=torch.float32)
        nn.init.zeros_(mixer.weight)
        mixer.requires_grad_(False)
        mixers[_key(name)] = mixer
        gates: dict[str, torch.Tensor] = {}
        layer.register_forward_pre_hook(_compute_gates(mixer, gates))
        for slot, adapter in enumerate(adapters):
            layer.lora_B[adapter].register_forward_hook(_gate(gates, slot))
    model.add_module(MIXER, mixers)
    return model


def _key(module: str) -> str:
    return module.replace(".", "/")


def _compute_gates(mixer: nn.Linear, gates: dict[str, torch.Tensor]):
    def hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
        gates["g"] = torch.softmax(mixer(args[0].to(mixer.weight.dtype)), dim=-1)  # (..., 2)

    return hook


def _gate(gates: dict[str, torch.Tensor], slot: int):
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output * gates["g"][..., slot : slot + 1].to(output.dtype)

    return hook


def _mixers(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's mixers by LoRA module name, sorted."""
    return {k.replace("/", "."): m for k, m in sorted(getattr(model, MIXER).items())}


def mixer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every mixer's weight, in sorted module order."""
    return [m.weight for m in _mixers(model).values()]


def mixer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached float32 CPU copies of the mixers, keyed ``"mixer:<module>"``."""
    return {
        f"mixer:{name}": m.weight.detach().to("cpu", torch.float32, copy=True)
        for name, m in _mixers(model).items()
    }


def set_mixer_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy mixer weights into the model (in place).

    Raises:
        KeyError: the keys differ from the model's mixers.
    """
    mixers = {f"mixer:{name}": m for name, m in _mixers(model).items()}
    if set(mixers) != set(state):
        missing, extra = sorted(set(mixers) - set(state)), sorted(set(state) - set(mixers))
        raise KeyError(
            f"mixer state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for key, mixer in mixers.items():
            mixer.weight.copy_(state[key])
