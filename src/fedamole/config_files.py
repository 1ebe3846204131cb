"""Reading configuration files and overrides: TOML files with ``extends``, dotted ``key=value``
overrides, and :class:`ConfigError`, which lists every problem at once.

:mod:`fedamole.config` builds the typed tree from what these functions return.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "parse_overrides", "read_toml_file", "read_with_extends", "set_dotted"]


class ConfigError(ValueError):
    """Every problem found in a configuration, one per line."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} configuration error(s):\n{lines}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into a ``{dotted_key: value}`` dict."""
    out: dict[str, Any] = {}
    bad = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or "." not in key:
            bad.append(f"override {item!r} must look like `section.field=value`")
            continue
        out[key.strip()] = _parse_value(raw.strip())
    if bad:
        raise ConfigError(bad)
    return out


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def read_toml_file(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's table, every way of failing to read it a clear error.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: a folder, unreadable, not UTF-8, or not valid TOML (naming the file and fix).
    """
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ConfigError([f"{path} is a folder, not a {what}: name a .toml file"])
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the {what} ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                f"{path}: not UTF-8 text (byte {exc.start}); a {what} is TOML, which is UTF-8: "
                "save it as UTF-8 (or check that it is the file you meant)"
            ]
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None


def read_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError([f"`extends` loops back to a file already read: {chain}"])
    data = read_toml_file(path)
    extends = data.pop("extends", None)
    if extends is None:
        return data
    if not isinstance(extends, str) or not extends:
        raise ConfigError(
            [f"{path}: `extends` = {extends!r} must be the path of another TOML file (a string)"]
        )
    base = read_with_extends((path.parent / extends).resolve(), (*seen, path.resolve()))
    _deep_merge(base, data)
    return base


def _deep_merge(base: dict[str, Any], diff: Mapping[str, Any]) -> None:
    for key, value in diff.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError([f"override `{key}`: `{part}` is not a section"])
    node[leaf] = value
