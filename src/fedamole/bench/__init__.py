"""Performance benchmarks: each writes JSON under an output folder and prints a table.

``BENCHMARKS`` maps a name to ``"module:function"``; each function has the signature
``main(out_dir: pathlib.Path, *, quick: bool = False) -> dict`` and returns what it wrote.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["BENCHMARKS", "run_benchmark"]

BENCHMARKS: dict[str, str] = {
    "layer": "fedamole.bench.layer:main",
    "assign": "fedamole.bench.assign:main",
}


def run_benchmark(name: str, out_dir: Path, *, quick: bool = False) -> dict:
    """Run one registered benchmark."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)} or 'all'")
    module, _, attr = BENCHMARKS[name].partition(":")
    out_dir.mkdir(parents=True, exist_ok=True)
    return getattr(importlib.import_module(module), attr)(out_dir, quick=quick)
