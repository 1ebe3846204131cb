"""Reading configuration files and overrides: TOML files with ``extends``, dotted ``key=value``
overrides, and :class:`ConfigError`, which lists every problem at once.

Shipped configs: the repository's ``configs/`` is installed as ``fedamole/configs`` (package data),
so a config can be named instead of given by path: ``paper/snli_dir0.1`` is
``<configs>/paper/snli_dir0.1.toml`` (:func:`resolve_config_path`) whenever no file of that name
exists. :func:`shipped_config_dir` finds the folder in an installed package or in a checkout.

:mod:`fedamole.config.load` builds the typed tree from what these functions return; this module
imports nothing else of fedamole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "parse_overrides",
    "read_toml_file",
    "read_with_extends",
    "resolve_config_path",
    "set_dotted",
    "shipped_config_dir",
    "shipped_config_names",
]

_PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # an installed wheel
_SOURCE_CONFIGS = Path(__file__).resolve().parents[3] / "configs"  # a checkout (src layout)
# Shipped grid files of `fedamole sweep`, not experiment configs: not offered as names.
_NOT_EXPERIMENTS = ("sweeps",)


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
        try:  # bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(item[exc.start]) - 0xDC00
            shown = f"the byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else repr(item[exc.start])
            bad.append(f"override {item!r} holds {shown}, which is not UTF-8 text; retype it")
            continue
        try:
            out[key.strip()] = _parse_value(raw.strip())
        except ValueError as exc:
            bad.append(f"override `{key.strip()}`: {exc}")
    if bad:
        raise ConfigError(bad)
    return out


def _parse_value(raw: str) -> Any:
    """One TOML value, or ``raw`` itself when it is not TOML (a bare word is a string).

    Raises:
        ValueError: TOML that is more than one value, nested too deeply, or a number too long.
    """
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    except (RecursionError, ValueError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else _short(exc)
        raise ValueError(
            f"cannot read the value {_clip(raw)} ({why}); give a usable value"
        ) from None
    if list(parsed) != ["v"]:
        raise ValueError(
            f"the value {_clip(raw)} holds more than one TOML value; give one value (quote a "
            "string that has a newline in it)"
        )
    return parsed["v"]


def _clip(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to ``limit`` characters with an ellipsis."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _short(exc: BaseException) -> str:
    """Python's message without its advice (`sys.set_int_max_str_digits` is not our fix)."""
    return str(exc).split(";")[0]


def shipped_config_dir() -> Path | None:
    """The folder of the configs shipped with fedamole: ``fedamole/configs`` in an installed
    package, the repository's ``configs/`` in a checkout (editable install); ``None`` if neither
    exists."""
    for folder in (_PACKAGED_CONFIGS, _SOURCE_CONFIGS):
        if (folder / "defaults.toml").is_file():
            return folder
    return None


def shipped_config_names(*, grids: bool = False) -> list[str]:
    """Names of the shipped experiment configs (``demo``, ``paper/snli_dir0.1``, ...): paths
    relative to :func:`shipped_config_dir` without ``.toml``, sweep grids left out; with
    ``grids``, the names of the sweep grids alone (``sweeps/rsea``, ...)."""
    folder = shipped_config_dir()
    if folder is None:
        return []
    names = []
    for path in sorted(folder.rglob("*.toml")):
        rel = path.relative_to(folder).with_suffix("")
        if (rel.parts[0] in _NOT_EXPERIMENTS) == grids:
            names.append(rel.as_posix())
    return names


def resolve_config_path(path: str | Path, *, grid: bool = False) -> Path:
    """The config file ``path`` names: ``path`` itself when it exists or ends in ``.toml``, else
    the shipped config of that name (``paper/snli_dir0.1`` -> ``<configs>/paper/snli_dir0.1.toml``).
    With ``grid``, a sweep grid (``sweeps/rsea``): only the message differs.

    Raises:
        FileNotFoundError: neither exists; the message lists the shipped names (of grids, with
            ``grid``).
    """
    given = Path(path)
    try:
        if given.exists():
            return given
        folder = shipped_config_dir()
        if given.suffix != ".toml" and not given.is_absolute() and folder is not None:
            candidate = folder / f"{given.as_posix()}.toml"
            if candidate.is_file():
                return candidate
    except OSError:  # a path the file system refuses (too long, ...): read_toml_file says so
        return given
    names = shipped_config_names(grids=grid)
    available = ", ".join(names) if names else "none (the configs folder is missing)"
    what, example = (
        ("grid", "fedamole sweep sweeps/rsea")
        if grid
        else ("config", "fedamole run paper/snli_dir0.1")
    )
    if given.suffix == ".toml":
        raise FileNotFoundError(
            f"{what} file {given} does not exist. A {what} shipped with fedamole can also be "
            f"named without .toml (e.g. `{example}`); shipped: {available}"
        )
    raise FileNotFoundError(
        f"{path!s} is neither a {what} file nor the name of a {what} shipped with fedamole; "
        f"shipped: {available} (or give the path of a .toml file)"
    )


def read_toml_file(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's table, every way of failing to read it a clear error.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: a folder, unreadable, not UTF-8, or not valid TOML (naming the file and fix).
    """
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ConfigError(
            [f"{_clip(str(path))}: cannot open the {what} ({exc.strerror}); check the path"]
        ) from None
    if not exists:
        raise FileNotFoundError(f"{what} {path} does not exist")
    if is_dir:
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
    except RecursionError:
        raise ConfigError(
            [f"{path}: arrays or tables nested too deeply to read; no setting needs that: fix it"]
        ) from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4300 digits)
        raise ConfigError([f"{path}: a value cannot be read ({_short(exc)}); fix it"]) from None


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
    try:
        target = (path.parent / Path(extends).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise ConfigError(
            [f"{path}: `extends` = {_clip(extends)} is not a usable file path ({exc})"]
        ) from None
    base = read_with_extends(target, (*seen, path.resolve()))
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
