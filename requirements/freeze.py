"""Write ``requirements/lock.txt``: every package that ``fedamole[dev,flower]`` needs, pinned.

Run by ``make lock`` inside a venv that was just resolved fresh (newest releases admitted by
pyproject.toml's bounds). The lock is the installed versions of fedamole's requirements and,
recursively, theirs, with extras and environment markers evaluated here. PyTorch and what only
PyTorch needs (its CUDA wheels, sympy, ...) are left out: ``TORCH_SPEC`` chooses the build, and a
GPU build's own pins must not fight the lock.

Usage: python requirements/freeze.py > requirements/lock.txt
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "fedamole"
EXTRAS = ("dev", "flower")
SKIP = {"torch"}  # chosen by TORCH_SPEC; its own dependencies are reached only through it


def _requirements(dist: str, extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements of an installed distribution that apply here, with ``extras`` on."""
    env = default_environment()
    out = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or any(
            req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras)
        ):
            out.append(req)
    return out


def closure() -> dict[str, str]:
    """Canonical name -> installed version for everything fedamole[dev,flower] pulls in."""
    pinned: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(ROOT, EXTRAS)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for req in _requirements(name, extras):
            key = canonicalize_name(req.name)
            if key in SKIP:
                continue
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                sys.exit(f"error: {req} (needed by {name}) is not installed; run `make lock`")
            pinned[key] = version
            todo.append((req.name, tuple(sorted(req.extras))))
    pinned.pop(canonicalize_name(ROOT), None)
    return pinned


def main() -> None:
    py = ".".join(map(str, sys.version_info[:2]))
    print(f"# fedamole's tested stack, written by `make lock` from a fresh resolve (Python {py}).")
    print("# `make install` uses it as pip constraints; `make install LOCK=` takes the newest")
    print("# releases instead. PyTorch is not here: TORCH_SPEC chooses it.")
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
