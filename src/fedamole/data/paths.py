"""Where ``data.path`` points (docs/data.md#where-datapath-resolves): ``~`` is expanded and a
relative path is joined to the data root, ``$FEDAMOLE_DATA`` when set, else the current working
directory (:func:`resolve_data_path`). :func:`locate` resolves it once, logs the absolute path and
checks that it exists; a path that does not exist is an error naming the value, the resolved path,
the data root and the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedamole.config import DataConfig
from fedamole.data.types import DataFileNotFoundError

__all__ = ["DATA_ROOT_ENV", "data_root", "locate", "resolve_data_path"]

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "FEDAMOLE_DATA"
"""The environment variable naming the data root, the folder a relative ``data.path`` is in."""
_RULE_DOC = "docs/data.md#where-datapath-resolves"


def _env_root() -> str | None:
    """``$FEDAMOLE_DATA``, or None when it is unset or empty."""
    return os.environ.get(DATA_ROOT_ENV) or None


def data_root() -> Path:
    """The folder a relative ``data.path`` is in: ``$FEDAMOLE_DATA`` (``~`` expanded, made
    absolute) when it is set and not empty, else the current working directory."""
    root = _env_root()
    return Path(os.path.abspath(os.path.expanduser(root))) if root else Path.cwd()


def resolve_data_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path that ``data.path`` names (docs/data.md#where-datapath-resolves).

    ``~`` is expanded; a relative path is joined to :func:`data_root`; ``..`` is folded (symbolic
    links are kept). Nothing is read: the path need not exist.
    """
    return Path(os.path.abspath(data_root() / os.path.expanduser(os.fspath(path))))


def _is_relative(given: str) -> bool:
    return not os.path.isabs(os.path.expanduser(given))


def _root_note(given: str) -> str:
    """How ``given`` resolved: relative to which data root, and whether FEDAMOLE_DATA is set."""
    env = _env_root()
    if not _is_relative(given):
        kind = "`~` expanded" if given.startswith("~") else "an absolute path"
        where = f"{DATA_ROOT_ENV}={env} is not used" if env else f"{DATA_ROOT_ENV} is not set"
        return f"{kind}: {where}"
    if env:
        missing = "" if data_root().is_dir() else ", a folder that does not exist"
        return f"relative to {DATA_ROOT_ENV}={env}{missing}"
    return f"relative to the working directory, {DATA_ROOT_ENV} is not set"


def locate(data: DataConfig, given: str) -> DataConfig:
    """``data`` with its ``path``, ``given``, resolved (:func:`resolve_data_path`), logged
    and checked to exist: the one place where ``data.path`` is resolved.

    Raises:
        DataFileNotFoundError: the path does not exist or cannot be looked at.
    """
    path = resolve_data_path(given)
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise DataFileNotFoundError(
            f"`data.path` ({str(path)!r:.120}) cannot be opened ({exc.strerror}); point "
            "`data.path` at the dataset file or folder"
        ) from None
    if not exists:
        layout = "the folder that holds snli/, dolly/ and natural-instructions/"
        fix = (
            f"set {DATA_ROOT_ENV} to {layout}, or pass data.path=ABSOLUTE_PATH (the dataset file "
            "or folder)"
            if _is_relative(given)
            else "point data.path at the dataset file or folder, or at one relative to "
            f"{DATA_ROOT_ENV} ({layout})"
        )
        raise DataFileNotFoundError(
            f"`data.path` = {given!r} resolves to {path} ({_root_note(given)}), which does not "
            f"exist: {fix}; see {_RULE_DOC}"
        )
    log.info("data.path %r: reading %s (%s)", given, path, _root_note(given))
    return data.model_copy(update={"path": str(path)})
