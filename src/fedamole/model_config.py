"""A model's config and its weightless skeleton: what :mod:`fedamole.preflight` checks a run
against before anything loads (docs/config.md#before-a-run-starts).

:func:`model_config` reads ``model.name``'s transformers config without any weights (built for
``tiny:`` names, from the safetensors cache or the GGUF header for ``embedded:`` names, from
``config.json`` for a folder, from the hub cache, or else the hub, for a hub id);
:func:`meta_model` builds the causal LM from it on torch's ``meta`` device: its module names and
parameter shapes, in milliseconds and no memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from fedamole.models import (
    EMBEDDED_MODELS,
    cache_dir,
    check_local_name,
    hub_reachable,
    package_dir,
    quiet_transformers,
    tiny_arch,
    tiny_config,
)

__all__ = ["ModelUnavailableError", "meta_model", "model_config"]


class ModelUnavailableError(ValueError):
    """A hub id whose config is neither in the local hub cache nor reachable on the hub."""


def model_config(name: str) -> PretrainedConfig:
    """The transformers config of ``model.name``, read without any weights: built for ``tiny:``
    names, from the cache (or the GGUF file) for ``embedded:`` names, from ``config.json`` for a
    folder, from the hub cache or else the hub for a hub id.

    Raises:
        ModelUnavailableError: a hub id neither cached nor reachable (the message says how to fix
            it).
        ValueError: an unknown ``tiny:``/``embedded:`` name, a missing folder or ``config.json``,
            an id the hub does not have (or that needs a login).
    """
    if name.startswith("tiny:"):
        return tiny_config(tiny_arch(name))
    if name.startswith("embedded:"):
        return _embedded_config(name)
    check_local_name(name)
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"`model.name` = {name!r}: the folder has no config.json; give a folder written "
                "by save_pretrained (config.json and weights), or a hub id"
            )
        return _read_config(name, folder)
    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    if not hub_reachable():
        from huggingface_hub import constants

        raise ModelUnavailableError(
            f"`model.name` = {name!r} is not in the local hub cache ({constants.HF_HUB_CACHE}) "
            "and the hub cannot be reached (offline, or HF_HUB_OFFLINE is set). Give a local "
            "folder holding the model (model.name=/path/to/model), a hub id that is cached here, "
            "'embedded:smollm2-135m-instruct' or 'tiny:llama'; or download it where there is "
            "a network (`hf download ID`) and copy the cache"
        )
    return _read_config(name, name)


def _read_config(name: str, source: str | Path) -> PretrainedConfig:
    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"`model.name` = {name!r}: its config cannot be read ({detail}); "
            "give an existing hub id (a gated one needs `hf auth login`), a local "
            "folder with config.json, 'embedded:smollm2-135m-instruct' or 'tiny:llama'"
        ) from None


def _embedded_config(name: str) -> PretrainedConfig:
    if name not in EMBEDDED_MODELS:
        raise ValueError(
            f"`model.name` = {name!r} is not an embedded model; choose one of "
            f"{sorted(EMBEDDED_MODELS)}"
        )
    target = cache_dir() / name.split(":", 1)[1]
    if (target / ".complete").exists():
        return AutoConfig.from_pretrained(target)
    package, filename = EMBEDDED_MODELS[name]
    try:
        folder = package_dir(package)
    except FileNotFoundError as exc:
        raise ValueError(f"`model.name` = {name!r}: {exc}") from None
    with quiet_transformers():  # reads the GGUF file's header (a few seconds, once)
        return AutoConfig.from_pretrained(folder, gguf_file=filename)


def meta_model(name: str) -> PreTrainedModel:
    """``model.name``'s causal LM built from :func:`model_config` on torch's ``meta`` device:
    its modules and parameter shapes, no weights (milliseconds, no memory).

    Raises:
        ModelUnavailableError, ValueError: as :func:`model_config`; also a config transformers
            cannot build a causal LM from.
    """
    config = model_config(name)
    try:
        with quiet_transformers(), torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"`model.name` = {name!r}: transformers cannot build a causal LM from its config "
            f"({exc}); give a decoder-only language model"
        ) from None
