"""Typed, frozen, validated configuration tree (docs/config.md).

A run is configured by ``configs/defaults.toml`` (every field, documented) overlaid with an
experiment's TOML diff and dotted ``key=value`` overrides from the command line. :func:`load` merges
the three, validates types *and* cross-field feasibility (docs/config.md#validation), and reports
every error at once as a :class:`ConfigError`, each line naming the field, the value and the fix.

The modules import in one direction, each only from those above it:

- :mod:`~fedamole.config.files`: TOML files with ``extends``, shipped config names, dotted
  overrides, :class:`ConfigError`.
- :mod:`~fedamole.config.schema`: the sections (types, ranges, defaults).
- :mod:`~fedamole.config.checks`: the constraints across fields, one function per concern, and
  the registered algorithms' names (:data:`AlgorithmName`, from their registrations' file names).
- :mod:`~fedamole.config.tree`: :class:`Config`, the whole tree, and its validation.
- :mod:`~fedamole.config.load`: :func:`load` and :func:`dump`.
"""

from fedamole.config.checks import AlgorithmName
from fedamole.config.files import (
    ConfigError,
    parse_overrides,
    read_toml_file,
    read_with_extends,
    resolve_config_path,
    set_dotted,
    shipped_config_dir,
)
from fedamole.config.load import CONFIG_DIR, dump, load
from fedamole.config.schema import (
    TRACKING_FIELDS,
    BaselinesConfig,
    DataConfig,
    EvalConfig,
    FDLoRAConfig,
    FedDPAConfig,
    FederationConfig,
    FedLEASEConfig,
    FlowerConfig,
    HetLoRAConfig,
    ModelConfig,
    MoLEConfig,
    PartitionConfig,
    PrivacyConfig,
    PTuningConfig,
    RanksConfig,
    RunConfig,
    TrainConfig,
)
from fedamole.config.tree import Config, differing_fields, feasibility_errors, flat_fields

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
    "TrainConfig",
    "differing_fields",
    "dump",
    "feasibility_errors",
    "flat_fields",
    "load",
    "parse_overrides",
    "read_toml_file",
    "read_with_extends",
    "resolve_config_path",
    "set_dotted",
    "shipped_config_dir",
]
