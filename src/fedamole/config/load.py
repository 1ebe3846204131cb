"""Loading a configuration: ``configs/defaults.toml`` overlaid with an experiment's TOML diff and
dotted ``key=value`` overrides from the command line, validated as a whole
(docs/config.md#validation); and writing the resolved config back as TOML.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomli_w

from fedamole.config.files import (
    ConfigError,
    parse_overrides,
    read_with_extends,
    resolve_config_path,
    set_dotted,
    shipped_config_dir,
)
from fedamole.config.tree import Config, validate

__all__ = ["CONFIG_DIR", "dump", "load"]

# The shipped configs (fedamole/configs when installed, the checkout's configs/ otherwise).
CONFIG_DIR = shipped_config_dir() or Path(__file__).resolve().parents[3] / "configs"


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load defaults, overlay a TOML file and ``key=value`` overrides, validate everything.

    Args:
        path: an experiment TOML (a diff over the defaults), the name of a shipped one
            (``paper/snli_dir0.1``, :func:`~fedamole.config.files.resolve_config_path`), or
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
    return validate(data)


def dump(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as TOML."""
    Path(path).write_text(tomli_w.dumps(cfg.to_dict()))
