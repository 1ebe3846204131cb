"""LoRA adapters on the shared frozen backbone, through peft's public API
(docs/algorithm.md#baselines).

Every LoRA baseline (local-only, FedIT, FFA-LoRA, FedSA-LoRA, FedDPA) installs plain LoRA adapters
(``r``, ``alpha``, dropout and target modules from ``cfg.baselines``; defaults r 8, alpha 16,
dropout 0.05 on ``q_proj``/``v_proj`` as the reference's FedIT) with ``peft.functional``, the API
peft declares public for integrations: ``inject_adapter_in_model``, ``cast_adapter_dtype``,
``set_adapter``, ``get_peft_model_state_dict``/``set_peft_model_state_dict``. The model stays the
transformers model (no ``PeftModel`` wrapper), so training and evaluation code is shared with
FedAMoLE unchanged.

- **State format.** An adapter's weights travel and are stored as a flat map keyed like the
  messages (``federated.messages``): ``"lora_A:<module>"`` (r, d_in) and ``"lora_B:<module>"``
  (d_out, r), module names as in ``model.named_modules()``. ``comm.jsonl`` therefore reports
  ``lora_A`` and ``lora_B`` bytes separately.
- **Initialization.** :func:`initial_lora_state` draws every A from an explicit generator,
  Kaiming-uniform with ``a = sqrt(5)`` (peft's default distribution, uniform on
  ``+-1/sqrt(d_in)``) in sorted module order, and sets every B to zero. peft's own init (global RNG)
  is always overwritten, so the server's broadcast init is a function of ``run.seed`` alone.
- **Precision.** Adapters are float32 whatever the backbone dtype (``cast_adapter_dtype``), like
  FedAMoLE's ``mole.adapter_dtype = "float32"`` default; peft casts each LoRA input to float32 and
  the sum back to the base dtype. The reference trains bf16 adapters
  (docs/algorithm.md#deviations-from-the-reference-implementation).
- **Mixing.** With several adapters installed all of them are active; :func:`adapter_scales`
  multiplies each one's ``alpha/r`` by a factor for the duration (peft's ``LoraLayer.set_scale``),
  which is how FedDPA mixes its global and local adapters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.functional import (
    cast_adapter_dtype,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_adapter,
    set_peft_model_state_dict,
)
from peft.tuners.lora import LoraLayer
from torch import nn

from fedamole.config import BaselinesConfig

__all__ = [
    "DEFAULT_ADAPTER",
    "PARTS",
    "adapter_scales",
    "initial_lora_state",
    "install_lora",
    "lora_config",
    "lora_layers",
    "lora_parameters",
    "lora_state",
    "lora_state_key",
    "part_of",
    "select_parts",
    "set_lora_state",
    "trainable",
]

DEFAULT_ADAPTER = "default"
"""Adapter name of the federated (or only) adapter; peft's default, so exports need no renaming."""

PARTS = ("lora_A", "lora_B")
"""The two halves of a LoRA adapter, also the message/payload kinds."""


def lora_config(cfg: BaselinesConfig) -> LoraConfig:
    """The peft ``LoraConfig`` of the baselines (no bias, causal LM task)."""
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def install_lora(
    model: nn.Module, cfg: BaselinesConfig, adapters: Sequence[str] = (DEFAULT_ADAPTER,)
) -> nn.Module:
    """Inject one float32 LoRA adapter per name into ``model`` (in place) and activate them all.

    Every parameter is left frozen: training code enables exactly the tensors it optimizes
    (:func:`trainable`).

    Returns:
        ``model`` itself (a transformers model with peft ``LoraLayer`` modules).

    Raises:
        ValueError: no target module matched (peft's message names the targets).
    """
    config = lora_config(cfg)
    for name in adapters:
        with warnings.catch_warnings():
            # Expected for every adapter after the first: "Already found a `peft_config` attribute".
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            inject_adapter_in_model(config, model, adapter_name=name)
        cast_adapter_dtype(model, name, autocast_adapter_dtype=True)
    set_adapter(model, list(adapters))
    model.requires_grad_(False)
    return model


def lora_state_key(part: str, module: str) -> str:
    """The message/state key of one half of one module's adapter: ``"lora_A:<module>"``."""
    return f"{part}:{module}"


def part_of(key: str) -> str:
    """``"lora_A"`` or ``"lora_B"`` of a state key."""
    return key.split(":", 1)[0]


def select_parts(
    state: Mapping[str, torch.Tensor], parts: Iterable[str]
) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose part is in ``parts``."""
    wanted = frozenset(parts)
    return {k: v for k, v in state.items() if part_of(k) in wanted}


def lora_state(model: nn.Module, adapter: str = DEFAULT_ADAPTER) -> dict[str, torch.Tensor]:
    """Detached float32 CPU copies of one adapter's weights, keys sorted (see module docstring)."""
    out = {}
    # save_embedding_layers=False: no embedding is ever adapted, and "auto" would look the base
    # model's config up on the Hub on every call.
    peft_sd = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)
    for key, value in peft_sd.items():
        module, part = _split_peft_key(key)
        out[lora_state_key(part, module)] = value.detach().to("cpu", torch.float32, copy=True)
    return dict(sorted(out.items()))


def set_lora_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], adapter: str = DEFAULT_ADAPTER
) -> None:
    """Copy a full adapter state (both parts of every module) into the model's parameters.

    The parameters are updated in place (their dtype and device are kept), so optimizers built
    before the call stay valid.

    Raises:
        KeyError: the keys differ from the adapter's modules.
        ValueError: a shape differs; nothing is loaded then.
    """
    current = lora_state(model, adapter)
    missing, extra = sorted(set(current) - set(state)), sorted(set(state) - set(current))
    if missing or extra:
        raise KeyError(
            f"adapter {adapter!r}: state does not match the model: missing {missing[:4]}, "
            f"unexpected {extra[:4]}"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in current.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"adapter {adapter!r}: wrong shapes: {'; '.join(bad[:4])}")
    peft_sd = {}
    for key, value in state.items():
        part, _, module = key.partition(":")
        peft_sd[f"{module}.{part}.weight"] = value
    result = set_peft_model_state_dict(model, peft_sd, adapter_name=adapter)
    assert not result.unexpected_keys, result.unexpected_keys  # checked above


def initial_lora_state(
    model: nn.Module, *, generator: torch.Generator, adapter: str = DEFAULT_ADAPTER
) -> dict[str, torch.Tensor]:
    """A fresh adapter state for ``model``'s modules: A Kaiming-uniform from ``generator``, B = 0.

    Draws one A per module in sorted module order, so the result depends only on the generator's
    seed and the model's shapes.
    """
    shapes = {k: tuple(v.shape) for k, v in lora_state(model, adapter).items()}
    out = {}
    for key, shape in shapes.items():
        if part_of(key) == "lora_A":
            d_in = shape[1]  # A is (r, d_in)
            bound = math.sqrt(2.0 / (1 + 5.0)) * math.sqrt(3.0 / d_in)  # kaiming_uniform_(a=√5)
            out[key] = torch.empty(shape).uniform_(-bound, bound, generator=generator)
        else:
            out[key] = torch.zeros(shape)  # B is (d_out, r)
    return out


def lora_parameters(
    model: nn.Module, adapter: str = DEFAULT_ADAPTER, parts: Iterable[str] = PARTS
) -> list[nn.Parameter]:
    """The parameters of the given parts of one adapter, in sorted module order."""
    wanted = frozenset(parts)
    out = []
    for _, layer in sorted(lora_layers(model).items()):
        for part in PARTS:
            if part in wanted and adapter in getattr(layer, part):
                out.append(getattr(layer, part)[adapter].weight)
    return out


@contextmanager
def trainable(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Exactly ``params`` require gradients for the duration; every parameter is frozen after."""
    model.requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    try:
        yield
    finally:
        model.requires_grad_(False)


@contextmanager
def adapter_scales(model: nn.Module, scales: Mapping[str, float]) -> Iterator[None]:
    """Multiply each named adapter's ``alpha/r`` scaling by a factor for the duration.

    A factor of 0 switches an adapter off, 1 restores peft's scaling (also done on exit).
    """
    layers = lora_layers(model).values()
    try:
        for layer in layers:
            for adapter, factor in scales.items():
                layer.set_scale(adapter, float(factor))
        yield
    finally:
        for layer in layers:
            for adapter in scales:
                layer.set_scale(adapter, 1.0)


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every peft ``LoraLayer`` of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _split_peft_key(key: str) -> tuple[str, str]:
    """``"model.layers.0.self_attn.q_proj.lora_A.weight"`` -> (module, ``"lora_A"``)."""
    head, part, weight = key.rsplit(".", 2)
    if part not in PARTS or weight != "weight":
        raise ValueError(f"unexpected LoRA state key {key!r}; only plain LoRA (no bias) is used")
    return head, part
