"""The sections of the configuration tree: each field's type, range and default.

``configs/defaults.toml`` documents every field (docs/config.md). A section is a frozen pydantic
model that forbids unknown keys, takes no NaN or infinity, and reads no boolean as a number; the
whole tree (:class:`fedamole.config.tree.Config`) and the checks across fields
(:mod:`fedamole.config.checks`) are built on these. This module imports nothing else of fedamole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "TRACKING_FIELDS",
    "BaselinesConfig",
    "DataConfig",
    "EvalConfig",
    "FDLoRAConfig",
    "FedDPAConfig",
    "FedLEASEConfig",
    "FederationConfig",
    "FlowerConfig",
    "HetLoRAConfig",
    "MoLEConfig",
    "ModelConfig",
    "PTuningConfig",
    "PartitionConfig",
    "PrivacyConfig",
    "RanksConfig",
    "RunConfig",
    "SecAggPlusConfig",
    "Section",
    "TrainConfig",
]

_INT64_MAX = 2**63 - 1


def _items(value: Any) -> Iterator[Any]:
    """``value`` itself or, for an array, every item in it at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
        else:
            yield item


class Section(BaseModel):
    """A frozen table of settings: unknown keys, NaN, infinity and booleans as numbers refused."""

    # allow_inf_nan=False: every float is finite (a NaN alpha would silently give an IID split)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """``true`` is not ``1``: pydantic would coerce it for an int or float field, and inside
        an array (``adam_betas``, ``fail_clients``). No integer needs more than 64 bits (numpy and
        torch take none, and Python does not print one of thousands of digits)."""
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        takes_bool = annotation is bool or bool in get_args(annotation)
        for item in _items(value):
            if isinstance(item, bool) and not takes_bool:
                raise ValueError(f"{item!r} is a boolean; this field takes a number or a name")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > _INT64_MAX:
                raise ValueError(
                    "an integer beyond 64 bits (more than 2**63 - 1); no setting takes one"
                )
        return value


class ModelConfig(Section):
    """The backbone (docs/algorithm.md#backbone)."""

    name: str = "embedded:smollm2-135m-instruct"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    max_length: int = Field(1024, ge=8)

    @field_validator("device")
    @classmethod
    def _torch_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", value):
            raise ValueError("a device is 'auto', 'cpu', 'cuda', 'cuda:N', 'mps', 'xpu' or 'xpu:N'")
        return value


class MoLEConfig(Section):
    """The HMoLE layer and its expert pool (docs/algorithm.md#hmole-layer)."""

    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    num_experts: int = Field(30, ge=1)
    clients_per_expert: int = Field(2, ge=1)
    min_experts_per_client: int = Field(2, ge=1)
    max_experts_per_client: int = Field(8, ge=1)
    top_k: int = Field(2, ge=1)
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    balance_coef: float = Field(0.001, ge=0)
    shared_expert: bool = True
    router: Literal["expert_embedding", "linear"] = "expert_embedding"
    adapter_dtype: Literal["float32", "base"] = "float32"
    # RSEA variants beyond the paper (their defaults keep the paper's rule; see
    # fedamole.algorithms.fedamole): the token projection behind the uploaded token embedding, and
    # a bonus on the affinity of an expert's current holders.
    rsea_token_proj: Literal["local", "received"] = "local"
    rsea_stats: Literal["trained", "received"] = "trained"
    rsea_retention: float = Field(0.0, ge=0)


class DataConfig(Section):
    """Which dataset, where from, and the per-client split ratios and caps (docs/data.md)."""

    dataset: Literal["synthetic", "snli", "dolly", "natural_instructions", "local"] = "synthetic"
    # Kept as given (so in the run's config.toml); a relative path is in the data root,
    # $FEDAMOLE_DATA or else the working directory, resolved when the data is loaded
    # (fedamole.data.resolve_data_path, docs/data.md#where-datapath-resolves).
    path: str | None = None
    num_examples: int = Field(2000, ge=1)
    num_tasks: int = Field(100, ge=1)
    families: tuple[str, ...] = ()
    embedding_ratio: float = Field(0.05, ge=0, lt=1)
    eval_ratio: float = Field(0.1, ge=0, lt=1)
    test_ratio: float = Field(0.1, ge=0, lt=1)
    embedding_cap: int = Field(200, ge=0)
    eval_cap: int = Field(200, ge=0)
    test_cap: int | None = Field(None, ge=1)


class PartitionConfig(Section):
    """How examples are spread over clients (docs/data.md#partitions)."""

    kind: Literal["iid", "dirichlet", "task"] = "dirichlet"
    alpha: float = 1.0
    tasks_per_client: int = Field(1, ge=1)
    clients_per_task: int = Field(1, ge=1)
    min_size: int = Field(10, ge=1)
    seed: int | None = Field(None, ge=0)  # numpy's SeedSequence takes no negative seed


class PTuningConfig(Section):
    """``[baselines.ptuning]``: FedPTuning only."""

    reference_quirk: bool = False


class FDLoRAConfig(Section):
    """``[baselines.fdlora]``: FDLoRA only."""

    sync_every: int = Field(5, ge=1)
    outer_lr: float = Field(1.0, gt=0)
    outer_momentum: float = Field(0.5, ge=0, lt=1)
    fusion_budget: int = Field(5, ge=1)
    fusion_batches: int = Field(5, ge=1)
    fusion_l1: float = Field(0.05, ge=0)
    weight_decay: float = Field(0.01, ge=0)


class FedDPAConfig(Section):
    """``[baselines.feddpa]``: FedDPA only."""

    local_steps: int | None = Field(None, ge=1)


class HetLoRAConfig(Section):
    """``[baselines.hetlora]``: HetLoRA only (docs/algorithm.md#hetlora)."""

    reg_lambda: float = Field(0.01, ge=0)
    prune_gamma: float = Field(0.9, gt=0, le=1)


class FedLEASEConfig(Section):
    """``[baselines.fedlease]``: FedLEASE only (docs/algorithm.md#fedlease)."""

    warmup_rounds: int = Field(1, ge=1)
    max_clusters: int | None = Field(None, ge=2)


class RanksConfig(Section):
    """``[baselines.ranks]``: each client's LoRA rank in the heterogeneous-rank baselines
    (FlexLoRA, HetLoRA; docs/algorithm.md#heterogeneous-ranks)."""

    distribution: Literal["budget", "homo", "random", "heavy_tail"] = "budget"
    values: tuple[Annotated[int, Field(ge=1)], ...] = ()


class BaselinesConfig(Section):
    """Settings of the baseline algorithms (docs/algorithm.md#baselines); FedAMoLE ignores them.
    Shared LoRA and prompt settings are flat; one algorithm's own settings are its sub-table."""

    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    prompt_tokens: int = Field(20, ge=1)
    prompt_encoder_hidden: int = Field(1024, ge=1)
    ptuning: PTuningConfig = PTuningConfig()
    fdlora: FDLoRAConfig = FDLoRAConfig()
    feddpa: FedDPAConfig = FedDPAConfig()
    hetlora: HetLoRAConfig = HetLoRAConfig()
    fedlease: FedLEASEConfig = FedLEASEConfig()
    ranks: RanksConfig = RanksConfig()


class FederationConfig(Section):
    """The federated protocol (docs/algorithm.md#federated-protocol)."""

    # A registered name (fedamole.config.checks.algorithm_errors), checked after the types
    # (feasibility_errors): an unknown name then comes last and does not trigger the checks of the
    # default algorithm.
    algorithm: str = "fedamole"
    num_clients: int = Field(10, ge=1)
    rounds: int = Field(30, ge=1)
    assignment: Literal["rsea", "static", "random", "oracle"] = "rsea"
    homogeneous: bool = False
    weighting: Literal["uniform", "examples"] = "uniform"
    # What protects the uploaded RSEA statistics (docs/privacy.md): "none"; "paper", the
    # reference's noise heuristic (no guarantee; privacy_eta); "gaussian", the Gaussian mechanism
    # with per-example clipping and an accountant ([privacy]). Booleans of old configs keep their
    # meaning: true -> "paper", false -> "none".
    privacy: Literal["none", "paper", "gaussian"] = "none"
    privacy_eta: float = Field(100.0, gt=0)
    fail_clients: tuple[tuple[int, int], ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _privacy_bool(cls, data: Any) -> Any:
        """``privacy = true/false`` (before it named a mechanism) -> ``"paper"``/``"none"``."""
        if isinstance(data, dict) and isinstance(data.get("privacy"), bool):
            data = {**data, "privacy": "paper" if data["privacy"] else "none"}
        return data


class PrivacyConfig(Section):
    """The Gaussian mechanism on the RSEA statistics (``federation.privacy = "gaussian"``) and
    its accounting (docs/privacy.md#the-gaussian-mechanism-on-the-statistics). Give either a
    target ``epsilon`` (the noise multiplier is solved for it over the run's releases) or a
    ``noise_multiplier`` (epsilon is reported), not both."""

    epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(None, gt=0)
    clip: float = Field(1.0, gt=0)  # public L2 bound on one example's contribution
    # Client-level DP for model updates (docs/privacy.md#client-level-dp-for-model-updates):
    # each client's update clipped to update_clip, Gaussian noise on every server mean.
    updates: Literal["none", "gaussian"] = "none"
    update_epsilon: float | None = Field(None, gt=0)
    update_noise_multiplier: float | None = Field(None, gt=0)
    update_clip: float = Field(1.0, gt=0)


_Beta = Annotated[float, Field(ge=0, lt=1)]  # torch's Adam refuses a beta outside [0, 1)


class TrainConfig(Section):
    """Local training (docs/algorithm.md#local-training)."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(1, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(5e-5, gt=0)
    lr_decay: float = Field(0.99, gt=0, le=1)
    adam_eps: float = Field(1e-6, gt=0)
    adam_betas: tuple[_Beta, _Beta] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(None, gt=0)


class EvalConfig(Section):
    """Evaluation (docs/algorithm.md#evaluation)."""

    test_init: bool = True
    timing: Literal["personalized", "global", "both"] = "personalized"
    # test every k-th round and the last (rounds k, 2k, ..., R; round 0 with test_init)
    every: int = Field(1, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    rouge_impl: Literal["rouge", "rouge-score"] = "rouge"


_HOOK_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

TRACKING_FIELDS = frozenset({"run.tensorboard", "run.hooks"})
"""Fields that only say where ``metrics.jsonl`` is mirrored: they change no result, so two
configs that differ only in them are the same run (:func:`differing_fields`), and a run may be
resumed with or without them."""


class RunConfig(Section):
    """Run directory, seed, logging, tracking."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = Field(42, ge=0)  # numpy's SeedSequence takes no negative seed
    checkpoint: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # CPU threads for torch in this process; None: OMP_NUM_THREADS if set (sweeps with --jobs set
    # it to a fair share), else torch's default (the machine's cores). Set 1 to run two
    # experiments side by side on a 2-core machine without their threads fighting.
    threads: int | None = Field(None, ge=1)
    # Mirrors of metrics.jsonl (TRACKING_FIELDS; docs/run-directory.md#tracking): a folder for
    # TensorBoard event files (each run in <folder>/<run directory's name>-<hash of its path>),
    # and callables named "package.module:function" that receive every record. Neither changes
    # a result.
    tensorboard: str | None = None
    hooks: tuple[str, ...] | None = None

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not value.strip() or value in (".", "..") or any(c in value for c in "/\\"):
            raise ValueError(
                "the run directory's name must be one folder name (not empty, no '/' or '\\', "
                "not '.' or '..'), e.g. run.name=my-run; use run.out_dir or --run-dir for where"
            )
        return value

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_folder(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "an empty folder; give one, e.g. run.tensorboard=tb (or leave it unset)"
            )
        return value

    @field_validator("hooks")
    @classmethod
    def _hook_paths(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        bad = [v for v in value or () if not _HOOK_PATH.fullmatch(v)]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))}: each hook is 'package.module:function' (a module "
                "to import, a colon, the callable in it), e.g. 'mytracking.wandb_hook:log'"
            )
        return value or None  # [] is unset: no hook


class SecAggPlusConfig(Section):
    """Flower's SecAgg+ parameters (``flower.secagg = "secaggplus"``;
    docs/algorithm.md#secure-aggregation). ``None`` shares and threshold: every client shares
    with every other, and a majority of them reconstructs."""

    num_shares: int | None = Field(None, ge=3)
    reconstruction_threshold: int | None = Field(None, ge=2)
    # Flower's defaults are 8.0 and 2**22 (up to 1023 clients); adapters stay well inside +-4,
    # and a small federation affords 4x finer levels: a step 2c/Q = 4.8e-7, up to 255 clients
    clipping_range: float = Field(4.0, gt=0)
    quantization_range: int = Field(2**24, ge=2, le=2**31 - 1)  # Flower rounds into int32
    modulus_range: int = Field(2**32, ge=4, le=2**32)
    experts_in_clear: bool = False  # FedAMoLE: run with the domain experts aggregated in the clear


class FlowerConfig(Section):
    """The Flower engine (``--engine flower``, ``fedamole deploy-local``); the embedded engine
    refuses ``secagg`` and ignores the rest."""

    client_cpus: float = Field(1.0, gt=0)
    client_gpus: float = Field(0.0, ge=0)
    round_timeout: float = Field(3600.0, gt=0)
    connect_timeout: float = Field(300.0, gt=0)
    secagg: Literal["none", "secaggplus"] = "none"
    secaggplus: SecAggPlusConfig = SecAggPlusConfig()
