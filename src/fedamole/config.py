"""Typed, frozen, validated configuration tree.

A run is configured by ``configs/defaults.toml`` (every field, documented) overlaid with an
experiment's TOML diff and dotted ``key=value`` overrides from the command line. :func:`load` merges
the three, validates types *and* cross-field feasibility (docs/config.md#validation), and reports
every error at once as a :class:`ConfigError`, each line naming the field, the value and the fix.

One baseline's own settings are a table of their own (``[baselines.fdlora]``); the flat keys they
replaced (``baselines.fdlora_sync_every``, ...) are rejected with an error naming the new key.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from fedamole.config_checks import SECTION_CHECKS
from fedamole.config_files import (
    ConfigError,
    parse_overrides,
    read_toml_file,
    read_with_extends,
    resolve_config_path,
    set_dotted,
    shipped_config_dir,
)

__all__ = [
    "CONFIG_DIR",
    "TRACKING_FIELDS",
    "AlgorithmName",
    "BaselinesConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FDLoRAConfig",
    "FedDPAConfig",
    "FederationConfig",
    "FlowerConfig",
    "MoLEConfig",
    "ModelConfig",
    "PTuningConfig",
    "PartitionConfig",
    "RunConfig",
    "TrainConfig",
    "differing_fields",
    "dump",
    "feasibility_errors",
    "flat_fields",
    "load",
    "parse_overrides",
    "read_toml_file",
]

# The shipped configs (fedamole/configs when installed, the checkout's configs/ otherwise).
CONFIG_DIR = shipped_config_dir() or Path(__file__).resolve().parents[2] / "configs"

# The registered algorithms (``fedamole.algorithms.ALGORITHMS``, which a test keeps equal): named
# here so that validation does not import the algorithms package, which imports this module.
AlgorithmName = Literal[
    "fdlora",
    "fedamole",
    "feddpa",
    "fedit",
    "fedprompt",
    "fedptuning",
    "fedsa_lora",
    "ffa_lora",
    "local",
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


class _Section(BaseModel):
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


class ModelConfig(_Section):
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


class MoLEConfig(_Section):
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


class DataConfig(_Section):
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


class PartitionConfig(_Section):
    """How examples are spread over clients (docs/data.md#partitions)."""

    kind: Literal["iid", "dirichlet", "task"] = "dirichlet"
    alpha: float = 1.0
    tasks_per_client: int = Field(1, ge=1)
    clients_per_task: int = Field(1, ge=1)
    min_size: int = Field(10, ge=1)
    seed: int | None = Field(None, ge=0)  # numpy's SeedSequence takes no negative seed


class PTuningConfig(_Section):
    """``[baselines.ptuning]``: FedPTuning only."""

    reference_quirk: bool = False


class FDLoRAConfig(_Section):
    """``[baselines.fdlora]``: FDLoRA only."""

    sync_every: int = Field(5, ge=1)
    outer_lr: float = Field(1.0, gt=0)
    outer_momentum: float = Field(0.5, ge=0, lt=1)
    fusion_budget: int = Field(5, ge=1)
    fusion_batches: int = Field(5, ge=1)
    fusion_l1: float = Field(0.05, ge=0)
    weight_decay: float = Field(0.01, ge=0)


class FedDPAConfig(_Section):
    """``[baselines.feddpa]``: FedDPA only."""

    local_steps: int | None = Field(None, ge=1)


class BaselinesConfig(_Section):
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


# Flat ``[baselines]`` keys that moved into the per-algorithm tables: old location -> new key.
_MOVED: dict[tuple[str, ...], str] = {
    ("baselines", f"{group}_{name}"): f"baselines.{group}.{name}"
    for group, section in (
        ("ptuning", PTuningConfig),
        ("fdlora", FDLoRAConfig),
        ("feddpa", FedDPAConfig),
    )
    for name in section.model_fields
}


class FederationConfig(_Section):
    """The federated protocol (docs/algorithm.md#federated-protocol)."""

    # One of AlgorithmName, checked after the types (feasibility_errors) as before: an unknown
    # name then comes last and does not trigger the checks of the default algorithm.
    algorithm: str = "fedamole"
    num_clients: int = Field(10, ge=1)
    rounds: int = Field(30, ge=1)
    assignment: Literal["rsea", "static", "random", "oracle"] = "rsea"
    homogeneous: bool = False
    weighting: Literal["uniform", "examples"] = "uniform"
    privacy: bool = False
    privacy_eta: float = Field(100.0, gt=0)
    fail_clients: tuple[tuple[int, int], ...] = ()


_Beta = Annotated[float, Field(ge=0, lt=1)]  # torch's Adam refuses a beta outside [0, 1)


class TrainConfig(_Section):
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


class EvalConfig(_Section):
    """Evaluation (docs/algorithm.md#evaluation)."""

    test_init: bool = True
    timing: Literal["personalized", "global", "both"] = "personalized"
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    rouge_impl: Literal["rouge", "rouge-score"] = "rouge"


_HOOK_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

TRACKING_FIELDS = frozenset({"run.tensorboard", "run.hooks"})
"""Fields that only say where ``metrics.jsonl`` is mirrored: they change no result, so two
configs that differ only in them are the same run (:func:`differing_fields`), and a run may be
resumed with or without them."""


class RunConfig(_Section):
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
    # TensorBoard event files (each run in <folder>/<run directory's name>), and callables named
    # "package.module:function" that receive every record. Neither changes a result.
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


class FlowerConfig(_Section):
    """The Flower engine (``--engine flower``, ``fedamole deploy-local``); the embedded engine
    ignores it."""

    client_cpus: float = Field(1.0, gt=0)
    client_gpus: float = Field(0.0, ge=0)
    round_timeout: float = Field(3600.0, gt=0)
    connect_timeout: float = Field(300.0, gt=0)


class Config(_Section):
    """The whole configuration tree."""

    model: ModelConfig = ModelConfig()
    mole: MoLEConfig = MoLEConfig()
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    federation: FederationConfig = FederationConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    flower: FlowerConfig = FlowerConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists, no ``None`` values) suitable for TOML."""
        return _drop_none(self.model_dump(mode="json"))

    def replace(self, **overrides: Any) -> Config:
        """A re-validated copy with dotted overrides: ``cfg.replace(**{"run.seed": 1})``."""
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, value)
        return _validate(data)


def feasibility_errors(cfg: Config) -> list[str]:
    """Cross-field constraints that the types alone cannot express (docs/config.md#validation).

    Args:
        cfg: a config whose fields each passed their own type and range checks.

    Returns:
        One message per violated constraint: the per-section checks of
        :mod:`fedamole.config_checks` in their order, then an unknown ``federation.algorithm``;
        empty when the config is feasible.
    """
    checks = (*SECTION_CHECKS, _algorithm_errors)
    return [error for check in checks for error in check(cfg)]


def _algorithm_errors(cfg: Config) -> list[str]:
    """A registered algorithm: one of :data:`AlgorithmName`."""
    names = get_args(AlgorithmName)
    if cfg.federation.algorithm in names:
        return []
    return [
        f"`federation.algorithm` ({cfg.federation.algorithm!r}) is unknown; "
        f"choose one of {sorted(names)}"
    ]


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load defaults, overlay a TOML file and ``key=value`` overrides, validate everything.

    Args:
        path: an experiment TOML (a diff over the defaults), the name of a shipped one
            (``paper/snli_dir0.1``, :func:`~fedamole.config_files.resolve_config_path`), or
            ``None`` for the defaults alone.
        overrides: dotted assignments such as ``"mole.num_experts=3"``; values are parsed as TOML
            (``1e-4``, ``true``, ``["q_proj"]``) and fall back to plain strings.

    Raises:
        ConfigError: every type, range and feasibility error at once.
        FileNotFoundError: the file does not exist (the message lists the shipped names).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_with_extends(resolve_config_path(path))
        if isinstance(data.get("sweep"), dict) and "axes" in data:
            raise ConfigError(
                [
                    f"{path} is a sweep grid ([sweep], [axes]), not one experiment's config: run "
                    f"it with `fedamole sweep {path}` (`--dry-run` lists and checks its runs)"
                ]
            )
    for key, value in parse_overrides(overrides).items():
        set_dotted(data, key, value)
    return _validate(data)


def dump(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as TOML."""
    Path(path).write_text(tomli_w.dumps(cfg.to_dict()))


def _validate(data: dict[str, Any]) -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = [_format_pydantic(err) for err in exc.errors()]
        # Report feasibility problems too: re-check with the bad fields reset to their defaults.
        repaired = copy.deepcopy(data)
        for err in exc.errors():
            _pop_dotted(repaired, err["loc"])
        with contextlib.suppress(ValidationError):
            errors += feasibility_errors(Config.model_validate(repaired))
        raise ConfigError(errors) from None
    errors = feasibility_errors(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


def _pop_dotted(data: dict[str, Any], loc: Sequence[Any]) -> None:
    """Remove the field at ``loc``; an error inside an array (``fail_clients.0.1``) removes the
    whole field, so that the feasibility checks still run on the rest."""
    node: Any = data
    for i, part in enumerate(loc):
        if not isinstance(node, dict) or part not in node:
            return
        if i == len(loc) - 1 or not isinstance(node[part], dict):
            node.pop(part)
            return
        node = node[part]


def _format_pydantic(err: Mapping[str, Any]) -> str:
    field = ".".join(str(p) for p in err["loc"])
    moved = _MOVED.get(tuple(err["loc"]))
    if err["type"] == "extra_forbidden" and moved:
        table, _, leaf = moved.rpartition(".")
        return f"`{field}` has moved: use `{moved}` (`{leaf}` in a `[{table}]` table)"
    if err["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in err["loc"][:-1]) or "top level"
        return f"`{field}` is not a known field (in {section}); check the spelling in defaults.toml"
    return f"`{field}` = {_shown(err.get('input'))}: {err['msg']}"


def _shown(value: Any, limit: int = 200) -> str:
    """``repr(value)``, shortened; an integer too long for Python to print is described."""
    try:
        text = repr(value)
    except ValueError:  # more than sys.get_int_max_str_digits() digits
        return "<an integer too long to print>"
    return text if len(text) <= limit else text[:limit] + "..."


def differing_fields(a: Config | Mapping[str, Any], b: Config | Mapping[str, Any]) -> list[str]:
    """Dotted names of the fields whose values differ between two configs (or their
    :meth:`Config.to_dict`), sorted, down to fields inside sub-tables
    (``baselines.fdlora.sync_steps``); :data:`TRACKING_FIELDS` never differ (they change no
    result: a run resumes with or without them). A field absent from one side (a config
    written before the field existed) counts as its default: a new field's default keeps the
    behaviour from before it."""
    left = flat_fields(a.to_dict() if isinstance(a, Config) else a)
    right = flat_fields(b.to_dict() if isinstance(b, Config) else b)
    defaults = flat_fields(Config().to_dict())
    return sorted(
        key
        for key in set(left) | set(right)
        if left.get(key, defaults.get(key)) != right.get(key, defaults.get(key))
        and key not in TRACKING_FIELDS
    )


def flat_fields(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of the leaves of a config dict's nested tables (lists are
    leaves): ``{"train.lr": 0.001, "baselines.fdlora.sync_steps": ...}``."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value
