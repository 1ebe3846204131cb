"""Export a client's personalized model from a run directory, and answer prompts with it.

:func:`export_client` reads the run's resolved ``config.toml`` and its last checkpoint
(``checkpoints/last``, :func:`fedamole.checkpoint.load_checkpoint`) and writes the model that
client ``c`` held at the end of the run: after its local training in round ``R``, or, when
``eval.timing`` added the evaluation-only round ``R+1``, after loading what the server sent there
(for FedIT, the final global adapter). Three formats, told apart by their files:

**peft adapter** (local-only, FedIT, FFA-LoRA, FedSA-LoRA): a standard peft directory
(``adapter_config.json`` + ``adapter_model.safetensors``, written by ``PeftModel.save_pretrained``),
loadable anywhere with ``PeftModel.from_pretrained(base, DIR)``. ``base_model_name_or_path`` is the
run's ``model.name`` (a hub id, a local path, or a fedamole name such as
``embedded:smollm2-135m-instruct`` that :func:`fedamole.models.load_backbone` understands).

**FedDPA**: the same peft directory for the global adapter, plus the private one in ``local/``
(peft's layout for a second adapter, ``PeftModel.load_adapter(DIR / "local", "local")``) and
``feddpa_direction.safetensors``: ``direction`` (d,), the mean unit representation of the client's
reference training prompts under its local adapter. :func:`generate` mixes the two adapters with
the instance weight ``a(x) = 0.5 * clamp(cos(h(x), direction))`` as the evaluation does
(:mod:`fedamole.algorithms.feddpa`); a plain ``PeftModel.from_pretrained`` gives the global adapter
alone. Computing ``direction`` reloads the run's data (the client's training prompts).

**fedamole MoLE** (FedAMoLE): the heterogeneous mixture has no peft equivalent, so::

    DIR/fedamole_export.json      the manifest (below), with "kind": "mole"
    DIR/mole_state.safetensors    the client's packed MoLE state, keys as in
                                  fedamole.federated.messages.pack_modules:
                                  ids:<m> (n,) int64, experts:<m>:A (n, r, d_in),
                                  experts:<m>:B (n, d_out, r), token_proj:<m> (r, d_in),
                                  shared:<m>:A / shared:<m>:B, gate:<m> (n, d_in) when present

Loading it (:func:`load_exported`): load the backbone, ``inject_mole(model, MoLEConfig(**mole))``,
``set_mole_state(model, unpack_modules(tensors))``.

All formats carry ``fedamole_export.json``: ``format`` ("fedamole-export"), ``version`` (1),
``kind`` ("peft", "feddpa" or "mole"), ``algorithm``, ``client``, ``round`` (of the checkpoint),
``base_model``, ``model_seed`` (the run seed: it fixes the weights of ``tiny:*`` test models),
``dtype``, ``max_length``, and for MoLE ``mole`` (the ``[mole]`` config) and ``expert_ids``
(module -> the global ids of the client's experts).

:func:`generate` loads any kind and greedily answers one instruction wrapped in the Alpaca
template (docs/algorithm.md#prompt-templates), as the evaluation decodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.functional import set_adapter
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms import ALGORITHMS, get_algorithm
from fedamole.algorithms.fedamole import client_mole_state
from fedamole.algorithms.feddpa import (
    LOCAL_ADAPTER,
    MAX_WEIGHT,
    local_direction,
    mix_weights,
    mixture,
    reference_prompts,
)
from fedamole.algorithms.lora_common import (
    DEFAULT_ADAPTER,
    adapter_scales,
    lora_config,
    set_lora_state,
)
from fedamole.algorithms.lora_strategy import state_key
from fedamole.checkpoint import load_checkpoint
from fedamole.config import Config, MoLEConfig, load
from fedamole.data import load_federated_data
from fedamole.data.prompts import alpaca_prompt
from fedamole.data.types import Example
from fedamole.evaluation import generate_responses
from fedamole.federated.messages import pack_modules, unpack_modules
from fedamole.models import load_model_and_tokenizer
from fedamole.mole import inject_mole, set_mole_state

__all__ = [
    "FEDDPA_DIRECTION",
    "MANIFEST",
    "MOLE_STATE",
    "export_client",
    "export_kind",
    "generate",
    "load_exported",
]

MANIFEST = "fedamole_export.json"
FEDDPA_DIRECTION = "feddpa_direction.safetensors"
MOLE_STATE = "mole_state.safetensors"
_FORMAT, _VERSION = "fedamole-export", 1


def export_client(run_dir: Path, client: int, out: Path) -> Path:
    """Write client ``client``'s model of the run in ``run_dir`` to the new folder ``out``.

    Args:
        run_dir: a run directory with ``config.toml`` and ``checkpoints/``.
        client: 0-based client id.
        out: the export folder; must not exist or be empty.

    Returns:
        ``out``.

    Raises:
        CheckpointError: the run has no readable checkpoint.
        ValueError: unknown client, or an algorithm whose models cannot be exported.
        FileExistsError: ``out`` is a non-empty folder (nothing is overwritten).
    """
    cfg = load(Path(run_dir) / "config.toml")
    state = load_checkpoint(Path(run_dir) / "checkpoints")
    clients = state["clients"]
    if client not in clients:
        raise ValueError(f"client {client} is not in the run; it has clients {sorted(clients)}")
    algorithm = cfg.federation.algorithm
    kind = export_kind(algorithm)
    if kind is None:
        exportable = sorted(a for a in ALGORITHMS if export_kind(a) is not None)
        raise ValueError(f"cannot export a {algorithm!r} client: export supports {exportable}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(cfg, client, int(state["round"]), kind)
    manifest.update(_WRITERS[kind](cfg, clients[client], client, out))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def load_exported(
    model_dir: Path, *, device: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The exported model (backbone with its adapters, eval mode) and its tokenizer.

    For FedDPA both adapters are active at full scale: mix them per prompt as :func:`generate`
    does. A peft directory without a fedamole manifest also works: its
    ``base_model_name_or_path`` is loaded with :func:`fedamole.models.load_model_and_tokenizer`.

    Raises:
        FileNotFoundError: ``model_dir`` holds neither format.
    """
    model_dir = Path(model_dir)
    manifest = _read_manifest(model_dir)
    if (model_dir / "adapter_config.json").exists():
        base = (
            manifest.get("base_model")
            or PeftConfig.from_pretrained(model_dir).base_model_name_or_path
        )
        model, tokenizer = _backbone(base, manifest, device)
        model = _attach_peft(model, model_dir, feddpa=manifest.get("kind") == "feddpa")
    elif (model_dir / MOLE_STATE).exists():
        model, tokenizer = _backbone(manifest["base_model"], manifest, device)
        inject_mole(model, MoLEConfig(**manifest["mole"]), generator=torch.Generator())
        set_mole_state(model, unpack_modules(load_file(str(model_dir / MOLE_STATE))))
    else:
        raise FileNotFoundError(
            f"{model_dir} is not an exported model: it has neither adapter_config.json nor "
            f"{MOLE_STATE}; create one with `fedamole export RUN --client C --out DIR`"
        )
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
    manifest = _read_manifest(Path(model_dir))
    max_length = int(manifest.get("max_length", 1024))
    example = Example(prompt=alpaca_prompt(prompt, context), response="", category="")
    scales: dict[str, float] = {}
    if manifest.get("kind") == "feddpa":
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


def export_kind(algorithm: str) -> str | None:
    """The export format an algorithm's client models take (its class's ``export_kind``:
    ``"peft"``, ``"feddpa"``, ``"mole"``), or ``None`` when they cannot be exported."""
    return getattr(get_algorithm(algorithm), "export_kind", None)


def _manifest(cfg: Config, client: int, rnd: int, kind: str) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "kind": kind,
        "algorithm": cfg.federation.algorithm,
        "client": client,
        "round": rnd,
        "base_model": cfg.model.name,
        "model_seed": cfg.run.seed,
        "dtype": cfg.model.dtype,
        "max_length": cfg.model.max_length,
    }


def _write_peft(
    cfg: Config, client_state: dict[str, Any], client: int, out: Path
) -> dict[str, Any]:
    key = state_key("default")
    if key not in client_state:
        raise ValueError(f"the checkpoint's client state has no {key!r} adapter to export")
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    peft_model = get_peft_model(model, lora_config(cfg.baselines))
    # get_peft_model takes the name from the model (empty for tiny models); record the run's.
    peft_model.peft_config["default"].base_model_name_or_path = cfg.model.name
    set_lora_state(peft_model.get_base_model(), client_state[key])
    # Embeddings are never trained here; False also skips peft's hub lookup of the base config.
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return {}


def _write_feddpa(
    cfg: Config, client_state: dict[str, Any], client: int, out: Path
) -> dict[str, Any]:
    keys = {name: state_key(name) for name in (DEFAULT_ADAPTER, LOCAL_ADAPTER)}
    missing = [k for k in keys.values() if k not in client_state]
    if missing:
        raise ValueError(f"the checkpoint's client state lacks the FedDPA adapters {missing}")
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    peft_model = get_peft_model(model, lora_config(cfg.baselines))
    peft_model.add_adapter(LOCAL_ADAPTER, lora_config(cfg.baselines))
    for adapter_config in peft_model.peft_config.values():
        adapter_config.base_model_name_or_path = cfg.model.name
    base = peft_model.get_base_model()
    set_lora_state(base, client_state[keys[DEFAULT_ADAPTER]])
    set_lora_state(base, client_state[keys[LOCAL_ADAPTER]], LOCAL_ADAPTER)
    set_adapter(base, [DEFAULT_ADAPTER, LOCAL_ADAPTER])
    train = load_federated_data(cfg).clients[client].train
    if not train:
        raise ValueError(f"client {client} has no training data to represent its local adapter")
    prompts = reference_prompts(train, seed=cfg.run.seed, client=client)
    direction = local_direction(
        base, tokenizer, prompts, max_length=cfg.model.max_length, batch_size=cfg.eval.batch_size
    )
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    save_file({"direction": direction.contiguous()}, str(out / FEDDPA_DIRECTION))
    return {"feddpa": {"local_adapter": LOCAL_ADAPTER, "max_weight": MAX_WEIGHT}}


def _write_mole(
    cfg: Config, client_state: dict[str, Any], client: int, out: Path
) -> dict[str, Any]:
    try:
        states = client_mole_state(client_state)  # validates the packing
    except KeyError as exc:
        raise ValueError(f"nothing to export: {exc.args[0]}") from None
    tensors = pack_modules(states)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / MOLE_STATE))
    return {
        "mole": cfg.mole.model_dump(mode="json"),
        "expert_ids": {name: st.expert_ids.tolist() for name, st in states.items()},
    }


def _read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / MANIFEST
    if not path.exists():
        return {}
    manifest = json.loads(path.read_text())
    if manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
        raise ValueError(
            f"{path}: unknown export format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; expected {_FORMAT!r} version {_VERSION}"
        )
    return manifest


def _attach_peft(model: PreTrainedModel, model_dir: Path, *, feddpa: bool) -> PreTrainedModel:
    """The backbone with the directory's adapter(s) injected (no ``PeftModel`` wrapper)."""
    peft_model = PeftModel.from_pretrained(model, model_dir)
    if not feddpa:
        return peft_model.get_base_model()
    peft_model.load_adapter(model_dir / LOCAL_ADAPTER, adapter_name=LOCAL_ADAPTER)
    model = peft_model.get_base_model()
    set_adapter(model, [DEFAULT_ADAPTER, LOCAL_ADAPTER])
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


# export kind -> writer of one client's model: (config, client state, client, folder) -> manifest
_WRITERS: dict[str, Callable[[Config, dict[str, Any], int, Path], dict[str, Any]]] = {
    "peft": _write_peft,
    "feddpa": _write_feddpa,
    "mole": _write_mole,
}
