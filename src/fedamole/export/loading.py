"""Load an exported model back, and answer prompts with it (the formats: :mod:`fedamole.export`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from peft.functional import set_adapter
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms.fedalt import ROW_ADAPTER, install_mixers, set_mixer_state
from fedamole.algorithms.feddpa import LOCAL_ADAPTER, mix_weights, mixture
from fedamole.algorithms.fedlease_router import (
    expert_adapter,
    install_routers,
    set_router_state,
)
from fedamole.algorithms.lora_common import DEFAULT_ADAPTER, adapter_scales
from fedamole.algorithms.pfedmoe import LOCAL_EXPERT
from fedamole.algorithms.virtual_tokens import VirtualTokenLM
from fedamole.config import MoLEConfig
from fedamole.data.prompts import alpaca_prompt
from fedamole.data.types import Example
from fedamole.evaluation import generate_responses
from fedamole.export.formats import (
    FEDALT_MIXERS,
    FEDDPA_DIRECTION,
    FEDLEASE_ROUTERS,
    FORMAT,
    MANIFEST,
    MOLE_STATE,
    PFEDMOE_GATES,
    VERSION,
)
from fedamole.export.source import quiet_peft
from fedamole.federated.messages import unpack_modules
from fedamole.models import load_model_and_tokenizer
from fedamole.mole import inject_mole, set_mole_state

__all__ = ["generate", "load_exported", "read_manifest"]


def load_exported(
    model_dir: Path, *, device: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The exported model, ready for inference (eval mode, no gradients), and its tokenizer.

    - **MoLE** (FedAMoLE): the ``transformers`` backbone with the MoLE layers injected and the
      client's experts, shared expert, token projections (and gates) loaded: the model the client
      was evaluated with. Call it as any causal LM (``model(input_ids).logits``, or
      :func:`generate`).
    - **peft LoRA** (FedIT, FFA-LoRA, FedSA-LoRA, local-only, FDLoRA): the backbone with the
      adapter injected (peft ``LoraLayer`` modules, no ``PeftModel`` wrapper).
    - **FedDPA**: both adapters active at full scale: mix them per prompt as :func:`generate` does.
    - **FedALT**: the individual and the rest-of-world adapters with the client's mixers, gating
      them per token as in training.
    - **pFedMoE**: the shared and the local experts with the client's gates, as in training.
    - **FedLEASE**: the client's M cluster experts with its routers (adaptive top-M per token, as
      in training); exported in the warm-up, its plain LoRA adapter.
    - **peft prompt** (FedPrompt, FedPTuning): a
      :class:`~fedamole.algorithms.virtual_tokens.VirtualTokenLM` (the virtual tokens placed after
      the left padding, as evaluated), with ``forward`` and ``generate`` of a causal LM.

    The tokenizer is the backbone's as fedamole loads it (left padding, a pad token). A peft
    directory without a fedamole manifest also works: its ``base_model_name_or_path`` is loaded
    with :func:`fedamole.models.load_model_and_tokenizer`.

    Args:
        model_dir: a folder written by :func:`export_client` (``fedamole export``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        FileNotFoundError: ``model_dir`` holds neither format.
        ValueError: a manifest of an unknown format or version, a damaged export (a file that
            does not read, or does not fit the model; the message names the folder and says to
            export again), or a base model fedamole cannot load (the message says which).

    Example::

        model, tokenizer = fedamole.export.load_exported("exports/client0", device="cpu")
        batch = tokenizer(["Name a colour."], return_tensors="pt")
        logits = model(**batch).logits
    """
    model_dir = Path(model_dir)
    peft_dir, mole_dir = (
        (model_dir / "adapter_config.json").exists(),
        (model_dir / MOLE_STATE).exists(),
    )
    if not peft_dir and not mole_dir:
        raise FileNotFoundError(
            f"{model_dir} is not an exported model: it has neither adapter_config.json nor "
            f"{MOLE_STATE}; create one with `fedamole export RUN --client C --out DIR`"
        )
    with _damaged(model_dir):
        manifest = read_manifest(model_dir)
        if peft_dir:
            base = (
                manifest.get("base_model")
                or PeftConfig.from_pretrained(model_dir).base_model_name_or_path
            )
        else:
            base, mole = manifest["base_model"], MoLEConfig(**manifest["mole"])
    model, tokenizer = _backbone(base, manifest, device)
    with _damaged(model_dir):
        if peft_dir:
            model = _attach_peft(model, model_dir, manifest)
        else:
            inject_mole(model, mole, generator=torch.Generator())
            set_mole_state(model, unpack_modules(load_file(str(model_dir / MOLE_STATE))))
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


def generate(model_dir: Path, prompt: str, *, max_new_tokens: int, context: str = "") -> str:
    """Greedy answer of an exported model to one instruction (the Alpaca template).

    A FedDPA model mixes its adapters with the instance weight of this prompt.

    Args:
        model_dir: a folder written by :func:`export_client` (or any peft LoRA directory whose
            base model fedamole can load).
        prompt: the instruction.
        max_new_tokens: generation budget.
        context: optional task input (the template's ``### Input:`` block).

    Raises:
        ValueError: the templated prompt is longer than the model's ``max_length``.
    """
    model, tokenizer = load_exported(model_dir)
    with _damaged(Path(model_dir)):
        manifest = read_manifest(Path(model_dir))
    max_length = int(manifest.get("max_length", 1024))
    example = Example(prompt=alpaca_prompt(prompt, context), response="", category="")
    scales: dict[str, float] = {}
    if manifest.get("kind") == "feddpa":
        with _damaged(Path(model_dir)):
            direction = load_file(str(Path(model_dir) / FEDDPA_DIRECTION))["direction"]
        (weight,) = mix_weights(
            model, tokenizer, [example.prompt], direction, max_length=max_length, batch_size=1
        )
        scales = mixture(weight)
    with adapter_scales(model, scales):
        (text,) = generate_responses(
            model,
            tokenizer,
            [example],
            batch_size=1,
            max_new_tokens=max_new_tokens,
            max_length=max_length,
        )
    if text is None:
        raise ValueError(f"the prompt is longer than the model's max_length ({max_length} tokens)")
    return text


class ExportFormatError(ValueError):
    """A manifest of a format or version this fedamole does not read (not damage)."""


@contextmanager
def _damaged(model_dir: Path) -> Iterator[None]:
    """An error reading the export's own files (a manifest that is not JSON or lacks a key, a
    truncated or garbled tensor file, tensors that do not fit the model) as one ``ValueError``
    naming the folder and the fix, instead of a traceback from deep inside a library."""
    try:
        yield
    except ExportFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{model_dir} is a damaged export ({type(exc).__name__}: {detail}); export the "
            "client again with `fedamole export RUN --client C --out NEW_DIR`"
        ) from None


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The export's manifest (``{}`` when it has none: a plain peft folder).

    Raises:
        ExportFormatError: (a ``ValueError``) a format or version this fedamole does not read.
        ValueError: a manifest that is not a JSON table.
    """
    path = model_dir / MANIFEST
    if not path.exists():
        return {}
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"{MANIFEST} holds a {type(manifest).__name__}, not a table")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ExportFormatError(
            f"{path}: unknown export format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; expected {FORMAT!r} version {VERSION}"
        )
    return manifest


def _attach_peft(
    model: PreTrainedModel, model_dir: Path, manifest: dict[str, Any]
) -> PreTrainedModel:
    """The backbone with the directory's adapter(s) injected (no ``PeftModel`` wrapper; FedALT's
    with its mixers, FedLEASE's with its routers), or a :class:`VirtualTokenLM` for a
    prompt-learning adapter."""
    kind = manifest.get("kind", "peft")
    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model, model_dir)
    if peft_model.active_peft_config.is_prompt_learning:
        return VirtualTokenLM(peft_model)  # type: ignore[return-value]
    if kind == "fedlease":
        return _fedlease(peft_model, model_dir, manifest["fedlease"])
    second = {"feddpa": LOCAL_ADAPTER, "fedalt": ROW_ADAPTER, "pfedmoe": LOCAL_EXPERT}.get(kind)
    if second is None:
        return peft_model.get_base_model()
    peft_model.load_adapter(model_dir / second, adapter_name=second)
    model = peft_model.get_base_model()
    set_adapter(model, [DEFAULT_ADAPTER, second])
    gates = {"fedalt": (FEDALT_MIXERS, "FedALT"), "pfedmoe": (PFEDMOE_GATES, "pFedMoE")}
    if kind in gates:
        file, method = gates[kind]
        mixers = model_dir / file
        if not mixers.is_file():
            raise FileNotFoundError(f"{mixers} is missing: the {method} export is incomplete")
        install_mixers(model, (DEFAULT_ADAPTER, second))
        set_mixer_state(model, load_file(str(mixers)))
    return model


def _fedlease(peft_model: PeftModel, model_dir: Path, info: dict[str, Any]) -> PreTrainedModel:
    """FedLEASE's M experts, gated per token by the client's routers (none in the warm-up)."""
    m, own = int(info["num_experts"]), int(info["cluster"])
    names = [expert_adapter(k) for k in range(max(m, 1))]
    for name in names[1:]:
        peft_model.load_adapter(model_dir / name, adapter_name=name)
    model = peft_model.get_base_model()
    set_adapter(model, names)
    if m:
        routers = model_dir / FEDLEASE_ROUTERS
        if not routers.is_file():
            raise FileNotFoundError(f"{routers} is missing: the FedLEASE export is incomplete")
        install_routers(model, m)
        set_router_state(model, load_file(str(routers)), own)
    return model


def _backbone(
    name: str, manifest: dict[str, Any], device: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_model_and_tokenizer(
        name,
        dtype=manifest.get("dtype", "auto"),
        device=device,
        seed=int(manifest.get("model_seed", 0)),
    )
