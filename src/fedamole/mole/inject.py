"""Wrap a causal LM's target linears in :class:`MoLELinear` layers (docs/algorithm.md#injection).

Injection swaps the parent's attribute for a wrapper that holds the original linear as
``base_layer`` (as peft's ``_replace_module`` does); no ``forward`` is patched. Every other
parameter is frozen.

Target patterns (``MoLEConfig.target_modules``, default ``q_proj`` and ``v_proj``, peft's default
for llama/qwen2) match a module when the pattern equals the last component of its qualified name
(``q_proj`` matches ``model.layers.3.self_attn.q_proj``) or, as a regular expression, fully matches
the whole name (``model\\.layers\\.[0-3]\\..*_proj``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from fedamole.config import MoLEConfig
from fedamole.mole.layer import MoLELinear, mole_modules
from fedamole.mole.state import init_module_state, set_mole_state

__all__ = ["find_targets", "inject_mole", "mole_parameters"]


def find_targets(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Qualified names of the modules matched by ``patterns``, sorted.

    Raises:
        ValueError: a pattern is not a valid regex, or nothing matches.
        TypeError: a matched module is not an ``nn.Linear``.
    """
    matchers = [(p, _compile(p)) for p in patterns]
    found = []
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if not name or not any(last == p or rx.fullmatch(name) for p, rx in matchers):
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"target module {name!r} is a {type(module).__name__}, not an nn.Linear; "
                "MoLE wraps linear layers only: narrow `mole.target_modules`"
            )
        found.append(name)
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)})
        raise ValueError(
            f"no module matches `mole.target_modules` {list(patterns)}; the model's linear layers "
            f"are named {linear[:12]}"
        )
    return sorted(found)


def inject_mole(
    model: nn.Module,
    cfg: MoLEConfig,
    *,
    generator: torch.Generator,
    num_experts_held: int | None = None,
) -> list[str]:
    """Wrap every target linear of ``model`` in place and freeze everything else.

    Each layer starts with experts ``0..n-1`` (``n = num_experts_held``, default
    ``cfg.min_experts_per_client``) drawn from ``generator`` module by module in sorted-name order
    (:func:`fedamole.mole.init_module_state`); the federated engine then loads each client's
    experts with ``set_mole_state`` or ``MoLELinear.set_experts``.

    Args:
        model: the backbone, modified in place.
        cfg: target modules, expert and router settings.
        generator: the only source of randomness of the initialization.
        num_experts_held: routed experts per layer to start with.

    Returns:
        The wrapped module names, sorted.

    Raises:
        ValueError: nothing to wrap, the model already has MoLE layers, or ``n < top_k``.
        TypeError: a target is not an ``nn.Linear``.
    """
    if mole_modules(model):
        raise ValueError("the model already has MoLE layers; inject into a fresh backbone")
    n = cfg.min_experts_per_client if num_experts_held is None else num_experts_held
    if n < cfg.top_k:
        raise ValueError(f"`num_experts_held` ({n}) must be >= `mole.top_k` ({cfg.top_k})")
    names = find_targets(model, cfg.target_modules)
    model.requires_grad_(False)
    states = {}
    for name in names:
        base = model.get_submodule(name)
        layer = MoLELinear(
            base,
            num_experts=n,
            rank=cfg.rank,
            alpha=cfg.alpha,
            top_k=cfg.top_k,
            dropout=cfg.dropout,
            shared_expert=cfg.shared_expert,
            router=cfg.router,
            adapter_dtype=torch.float32 if cfg.adapter_dtype == "float32" else None,
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
        states[name] = init_module_state(
            base.in_features, base.out_features, cfg, generator=generator, num_experts=n
        )
    set_mole_state(model, states)
    return names


def mole_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable MoLE parameters (experts, shared expert, token_proj, gates), in a fixed order.

    Call again after ``set_experts``/``set_mole_state``: those create new expert Parameters.
    """
    return [
        param
        for module in mole_modules(model).values()
        for name, param in module.named_parameters()
        if not name.startswith("base_layer.")
    ]


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"`mole.target_modules` entry {pattern!r} is not a valid regex: {exc}"
        ) from None


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)
