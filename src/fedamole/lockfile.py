"""The tested dependency set (``requirements/lock.txt``) and how far this environment is from it.

``make install`` installs under the lock's pins (pip constraints); ``make lock`` re-resolves it.
Each run records :func:`lock_status` in ``env.json``, so a result names the stack that produced
it: the lock's sha256 and every installed version that differs from its pin (none after
``make install``).
"""

from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["LOCK_PATH", "lock_status", "read_lock"]

# In a source checkout (how `make install` installs, editable); a wheel carries no lock.
LOCK_PATH = Path(__file__).resolve().parents[2] / "requirements" / "lock.txt"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK_PATH) -> dict[str, str]:
    """Canonical package name -> pinned version.

    Raises:
        ValueError: a line that is neither a comment nor ``name==version``.
    """
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected `name==version`, got {raw!r}")
        pins[_canonical(match.group(1))] = match.group(2)
    return pins


def lock_status(path: Path = LOCK_PATH) -> dict[str, Any] | None:
    """The lock's path and sha256, and ``{name: {"locked", "installed"}}`` for every pin this
    environment does not match (``installed`` None: not installed, e.g. the Flower extra).
    None when there is no lock (an installed wheel)."""
    if not path.is_file():
        return None
    differs = {}
    for name, version in read_lock(path).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differs[name] = {"locked": version, "installed": installed}
    return {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "differs": differs,
    }
