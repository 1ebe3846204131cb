"""``env.json``: what produced a run (docs/run-directory.md#envjson), and the run directory's
format version.

Written once, when the run starts (not rewritten on resume). Its ``format`` is
:data:`FORMAT_VERSION`, the version of the run directory's layout and records that this code
writes; directories written before the field existed have none and are version 1
(:func:`format_version`; docs/architecture.md#old-run-directories).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from fedamole.lockfile import lock_status

__all__ = ["FORMAT_VERSION", "environment", "format_version", "write_env"]

FORMAT_VERSION = 1
"""The run directory format this code writes and reads. Raise it when a file or record changes
in a way an older reader would misread, and teach the readers the older versions."""

_PACKAGES = ("fedamole", "torch", "transformers", "peft", "numpy", "scipy", "safetensors", "flwr")


def environment() -> dict[str, Any]:
    """Package versions, the dependency pins' status (:func:`fedamole.lockfile.lock_status`),
    device, git sha and start time, for ``env.json``."""
    import torch

    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "lock": lock_status(),
        "cuda": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_sha": _git_sha(),
        "argv": sys.argv,
    }


def write_env(path: Path) -> None:
    """Write ``env.json``: :func:`environment` and the format version."""
    path.write_text(json.dumps({"format": FORMAT_VERSION, **environment()}, indent=2) + "\n")


def format_version(path: Path) -> int:
    """The format version of the run whose ``env.json`` is ``path``: its ``format``, or 1 for a
    run written before the field existed (or without an ``env.json``)."""
    try:
        env = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return 1
    return int(env.get("format", 1)) if isinstance(env, dict) else 1


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
