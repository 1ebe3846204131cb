"""fedamole: personalized federated fine-tuning of LLMs with heterogeneous mixtures of LoRA
experts (FedAMoLE).

The command line (``fedamole --help``) and this Python API do the same things::

    import fedamole

    cfg = fedamole.load_config("configs/smoke.toml", train__steps=4)
    result = fedamole.run(cfg, run_dir="runs/try")
    print(fedamole.report("runs/try"))

- :func:`run`: run one experiment (``fedamole run``); returns its
  :class:`~fedamole.engines.summary.RunResult`.
- :func:`load_config`: the validated config (``fedamole validate``).
- :func:`load_runs`: read run directories (:class:`~fedamole.analysis.results.Run`).
- :func:`report`: the markdown (or CSV) tables ``fedamole report`` prints.
- :class:`ConfigError`: what a bad config or override raises.

Overrides are keyword arguments with ``__`` for each dot: ``train__steps=4`` is the command
line's ``train.steps=4`` (see :mod:`fedamole.api`). ``import fedamole`` imports none of these
until first used, and torch only when a run starts.
"""

from importlib import metadata as _metadata
from typing import TYPE_CHECKING as _TYPE_CHECKING

try:
    __version__ = _metadata.version("fedamole")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "load_config", "load_runs", "report", "run"]

# name -> the module it lives in, imported on first access (PEP 562)
_LAZY = {
    "ConfigError": "fedamole.config",
    "load_config": "fedamole.api",
    "load_runs": "fedamole.api",
    "report": "fedamole.api",
    "run": "fedamole.api",
}

if _TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports them
    from fedamole.api import load_config, load_runs, report, run
    from fedamole.config import ConfigError


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedamole' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
