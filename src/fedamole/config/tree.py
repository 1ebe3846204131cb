"""The whole configuration tree, :class:`Config`, and its validation (docs/config.md#validation).

:func:`validate` checks a nested dict against the sections' types and ranges
(:mod:`fedamole.config.schema`), then the constraints across fields
(:mod:`fedamole.config.checks`), and reports every error at once as a
:class:`~fedamole.config.files.ConfigError`, each line naming the field, the value and the fix.

One baseline's own settings are a table of their own (``[baselines.fdlora]``); the flat keys they
replaced (``baselines.fdlora_sync_every``, ...) are rejected with an error naming the new key.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from fedamole.config.checks import (
    algorithm_errors,
    assignment_errors,
    data_errors,
    eval_timing_errors,
    federation_errors,
    fedlease_errors,
    model_errors,
    privacy_errors,
    rank_errors,
    secagg_errors,
    secagg_privacy_errors,
    target_errors,
    train_errors,
)
from fedamole.config.files import ConfigError, set_dotted
from fedamole.config.schema import (
    TRACKING_FIELDS,
    BaselinesConfig,
    DataConfig,
    EvalConfig,
    FDLoRAConfig,
    FedDPAConfig,
    FederationConfig,
    FlowerConfig,
    ModelConfig,
    MoLEConfig,
    PartitionConfig,
    PrivacyConfig,
    PTuningConfig,
    RunConfig,
    Section,
    TrainConfig,
)

__all__ = ["Config", "differing_fields", "feasibility_errors", "flat_fields", "validate"]


class Config(Section):
    """The whole configuration tree."""

    model: ModelConfig = ModelConfig()
    mole: MoLEConfig = MoLEConfig()
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    federation: FederationConfig = FederationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
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
        return validate(data)


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


def feasibility_errors(cfg: Config) -> list[str]:
    """Cross-field constraints that the types alone cannot express (docs/config.md#validation).

    Args:
        cfg: a config whose fields each passed their own type and range checks.

    Returns:
        One message per violated constraint, in report order: the checks of
        :mod:`fedamole.config.checks` on the model, the assignment, the evaluation timing, the
        data, training and the federation, then an unknown ``federation.algorithm`` (last, so
        that it does not trigger the checks of the default algorithm); empty when the config is
        feasible.
    """
    return [
        *model_errors(cfg.model),
        *assignment_errors(cfg.mole, cfg.federation),
        *target_errors(cfg.mole, cfg.federation),
        *rank_errors(cfg.baselines, cfg.mole, cfg.federation),
        *fedlease_errors(cfg.baselines, cfg.federation),
        *eval_timing_errors(cfg.federation, cfg.eval),
        *data_errors(cfg.data, cfg.partition),
        *train_errors(cfg.train),
        *federation_errors(cfg.federation),
        *secagg_errors(cfg.flower, cfg.federation),
        *privacy_errors(cfg.federation, cfg.privacy),
        *secagg_privacy_errors(cfg.flower, cfg.privacy),
        *algorithm_errors(cfg.federation),
    ]


def validate(data: dict[str, Any]) -> Config:
    """The frozen :class:`Config` of a nested dict (a TOML file's tables, overrides applied).

    Raises:
        ConfigError: every type, range and feasibility error at once.
    """
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
