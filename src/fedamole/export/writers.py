"""The writers of one client's model, one per export format (docs: :mod:`fedamole.export`).

An algorithm's registration names its writer (``Export.writer``,
:mod:`fedamole.algorithms.registry`); :func:`~fedamole.export.export_client` calls it as
``writer(source, folder)`` on an empty staging folder, and it returns the manifest's extra
entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PromptTuningInit, get_peft_model
from peft.functional import set_adapter
from safetensors.torch import save_file

from fedamole.algorithms import get_algorithm
from fedamole.algorithms.fedamole import client_mole_state
from fedamole.algorithms.feddpa import LOCAL_ADAPTER, MAX_WEIGHT, local_direction, reference_prompts
from fedamole.algorithms.lora_common import DEFAULT_ADAPTER, lora_config, set_lora_state
from fedamole.algorithms.lora_ranks import client_ranks, truncate
from fedamole.algorithms.lora_strategy import state_key
from fedamole.config import Config
from fedamole.data import load_federated_data
from fedamole.export.formats import (
    FEDALT_MIXERS,
    FEDDPA_DIRECTION,
    FEDLEASE_ROUTERS,
    MOLE_STATE,
    PFEDMOE_GATES,
)
from fedamole.export.source import Source, base_model, lora_client_state, quiet_peft
from fedamole.federated.messages import pack_modules
from fedamole.models import load_model_and_tokenizer
from fedamole.rundir import RunDir, fold, read_jsonl

__all__ = [
    "write_fdlora",
    "write_fedalt",
    "write_feddpa",
    "write_fedlease",
    "write_flexlora",
    "write_hetlora",
    "write_mole",
    "write_peft",
    "write_pfedmoe",
    "write_prompt",
]


def write_peft(source: Source, out: Path) -> dict[str, Any]:
    _save_lora(source.cfg, _federated_adapter(source), out)
    return {}


def write_flexlora(source: Source, out: Path) -> dict[str, Any]:
    """The client's own rank-r_i adapter (its first r_i components, alpha / r_i scaling)."""
    rank = client_ranks(source.cfg)[source.client]
    adapter = truncate(_federated_adapter(source), rank)
    _save_lora(source.cfg.replace(**{"baselines.lora_rank": rank}), adapter, out)
    return {"flexlora": {"rank": rank}}


def write_hetlora(source: Source, out: Path) -> dict[str, Any]:
    """The client's adapter at its current rank r_i, its alpha rescaled so that the export
    scales it by the run's alpha / r_max as the client did (docs/algorithm.md#hetlora)."""
    from fedamole.algorithms.hetlora import upload_rank

    ranks = client_ranks(source.cfg)
    current = int(lora_client_state(source).get("rank", ranks[source.client]))
    adapter = truncate(_federated_adapter(source), current)
    rank = upload_rank(adapter)
    alpha = source.cfg.baselines.lora_alpha * rank / max(ranks)
    cfg = source.cfg.replace(**{"baselines.lora_rank": rank, "baselines.lora_alpha": alpha})
    _save_lora(cfg, adapter, out)
    return {"hetlora": {"rank": rank, "lora_alpha": alpha}}


def _federated_adapter(source: Source) -> dict[str, torch.Tensor]:
    client_state = lora_client_state(source)
    key = state_key(DEFAULT_ADAPTER)
    if key not in client_state:
        raise ValueError(f"the checkpoint's client state has no {key!r} adapter to export")
    return client_state[key]


def write_fdlora(source: Source, out: Path) -> dict[str, Any]:
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


def _fusion_weights(source: Source, rnd: int) -> tuple[float, float]:
    """FDLoRA's fusion weights of the client's received model in round ``rnd`` (metrics.jsonl)."""
    records = list(read_jsonl(RunDir(source.run_dir).metrics, steps=False))
    try:
        w0 = fold(records, "fusion", "received_w0")[rnd][source.client]
        w1 = fold(records, "fusion", "received_w1")[rnd][source.client]
    except KeyError:
        raise ValueError(
            f"client {source.client} logged no fusion weights of its received model in round "
            f"{rnd} (metrics.jsonl: fusion/received_w0, _w1): it failed that round, or the "
            "round's received model was not tested (eval.every); export a tested round"
        ) from None
    return w0, w1


def _save_lora(cfg: Config, adapter: dict[str, torch.Tensor], out: Path) -> None:
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    with quiet_peft():
        peft_model = get_peft_model(model, lora_config(cfg.baselines))
    # get_peft_model takes the name from the model (empty for tiny models); record the run's.
    peft_model.peft_config[DEFAULT_ADAPTER].base_model_name_or_path = base_model(cfg)
    set_lora_state(peft_model.get_base_model(), adapter)
    # Embeddings are never trained here; False also skips peft's hub lookup of the base config.
    peft_model.save_pretrained(str(out), save_embedding_layers=False)


def write_fedalt(source: Source, out: Path) -> dict[str, Any]:
    """Both LoRA adapters as one peft folder (the rest-of-world one in ``row/``) and the mixers
    (:data:`~fedamole.export.formats.FEDALT_MIXERS`)."""
    from fedamole.algorithms.fedalt import ROW_ADAPTER

    return _write_gated_pair(source, out, ROW_ADAPTER, "mixer", FEDALT_MIXERS, "FedALT", "mixers")


def write_pfedmoe(source: Source, out: Path) -> dict[str, Any]:
    """Both experts as one peft folder (the local one in ``local/``) and the gates
    (:data:`~fedamole.export.formats.PFEDMOE_GATES`)."""
    from fedamole.algorithms.pfedmoe import LOCAL_EXPERT

    return _write_gated_pair(source, out, LOCAL_EXPERT, "gate", PFEDMOE_GATES, "pFedMoE", "gates")


def _write_gated_pair(
    source: Source, out: Path, second: str, key: str, filename: str, label: str, what: str
) -> dict[str, Any]:
    """Two adapters as one peft folder (``second`` in its own subfolder) and the per-token mixing
    weights of client state ``key`` in ``filename`` (FedALT's mixers, pFedMoE's gates)."""
    client_state = lora_client_state(source)
    if key not in client_state:
        raise ValueError(f"the checkpoint's client state lacks the {label} {what}")
    peft_model, _ = _two_adapters(source.cfg, client_state, second, label)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    save_file({k: v.contiguous() for k, v in client_state[key].items()}, str(out / filename))
    return {}


def write_fedlease(source: Source, out: Path) -> dict[str, Any]:
    """The client's M cluster experts as one peft folder (expert k > 0 in ``expert<k>/``) and its
    routers (:data:`~fedamole.export.formats.FEDLEASE_ROUTERS`); in the warm-up (no cluster yet)
    its plain LoRA adapter alone."""
    from fedamole.algorithms.fedlease_router import expert_adapter

    cfg, client_state = source.cfg, lora_client_state(source)
    m, own = int(client_state.get("num_experts", 0)), int(client_state.get("cluster", 0))
    names = [expert_adapter(k) for k in range(max(m, 1))]
    missing = [state_key(n) for n in names if state_key(n) not in client_state]
    if missing or (m and "router" not in client_state):
        raise ValueError(f"the checkpoint's client state lacks the FedLEASE experts {missing}")
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    with quiet_peft():
        peft_model = get_peft_model(model, lora_config(cfg.baselines))
    for name in names[1:]:
        peft_model.add_adapter(name, lora_config(cfg.baselines))
    for adapter_config in peft_model.peft_config.values():
        adapter_config.base_model_name_or_path = base_model(cfg)
    for name in names:
        set_lora_state(peft_model.get_base_model(), client_state[state_key(name)], name)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    if m:
        routers = {k: v.contiguous() for k, v in client_state["router"].items()}
        save_file(routers, str(out / FEDLEASE_ROUTERS))
    return {"fedlease": {"num_experts": m, "cluster": own}}


def _two_adapters(
    cfg: Config, client_state: dict[str, Any], second: str, method: str
) -> tuple[Any, Any]:
    """A peft model of the backbone with the client's federated adapter and its ``second`` one
    loaded (both active), and the tokenizer.

    Raises:
        ValueError: the client state lacks one of the adapters.
    """
    keys = {name: state_key(name) for name in (DEFAULT_ADAPTER, second)}
    missing = [k for k in keys.values() if k not in client_state]
    if missing:
        raise ValueError(f"the checkpoint's client state lacks the {method} adapters {missing}")
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    with quiet_peft():
        peft_model = get_peft_model(model, lora_config(cfg.baselines))
    peft_model.add_adapter(second, lora_config(cfg.baselines))
    for adapter_config in peft_model.peft_config.values():
        adapter_config.base_model_name_or_path = base_model(cfg)
    base = peft_model.get_base_model()
    for name, key in keys.items():
        set_lora_state(base, client_state[key], name)
    set_adapter(base, [DEFAULT_ADAPTER, second])
    return peft_model, tokenizer


def write_feddpa(source: Source, out: Path) -> dict[str, Any]:
    cfg, client = source.cfg, source.client
    peft_model, tokenizer = _two_adapters(cfg, lora_client_state(source), LOCAL_ADAPTER, "FedDPA")
    base = peft_model.get_base_model()
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


def write_prompt(source: Source, out: Path) -> dict[str, Any]:
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
    with quiet_peft():
        wrapped = algo.prepare_model(model)
    algo.load_state_dict(source.state["server"])
    algo.load_prompt(wrapped, algo.configure_round(rnd)[source.client])
    peft_model = wrapped.peft_model
    config = peft_model.peft_config[DEFAULT_ADAPTER]
    config.base_model_name_or_path = base_model(cfg)
    if getattr(config, "prompt_tuning_init", None) == PromptTuningInit.TEXT:
        # the prompt is trained: the init text (and the temporary tokenizer copy) no longer matter
        config.prompt_tuning_init = PromptTuningInit.RANDOM
        config.prompt_tuning_init_text = None
        config.tokenizer_name_or_path = None
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return {"prompt_round": rnd}


def write_mole(source: Source, out: Path) -> dict[str, Any]:
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
