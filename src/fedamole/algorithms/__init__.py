"""Federated algorithms behind one protocol (:mod:`fedamole.algorithms.base`).

``ALGORITHMS`` maps the config's ``federation.algorithm`` to ``"module:Class"``; classes are
imported only when a run needs them, so config validation stays cheap.
"""

from __future__ import annotations

import importlib

__all__ = ["ALGORITHMS", "get_algorithm"]

ALGORITHMS: dict[str, str] = {
    "fdlora": "fedamole.algorithms.fdlora:FDLoRA",
    "fedamole": "fedamole.algorithms.fedamole:FedAMoLE",
    "feddpa": "fedamole.algorithms.feddpa:FedDPA",
    "fedit": "fedamole.algorithms.fedit:FedIT",
    "fedprompt": "fedamole.algorithms.prompt_tuning:FedPrompt",
    "fedptuning": "fedamole.algorithms.p_tuning:FedPTuning",
    "fedsa_lora": "fedamole.algorithms.fedsa_lora:FedSALoRA",
    "ffa_lora": "fedamole.algorithms.ffa_lora:FFALoRA",
    "local": "fedamole.algorithms.local:LocalOnly",
}


def get_algorithm(name: str) -> type:
    """Import and return the algorithm class registered under ``name``."""
    try:
        target = ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
