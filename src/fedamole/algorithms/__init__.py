"""Federated algorithms behind one protocol (:mod:`fedamole.algorithms.base`), each registered once
beside its code (:mod:`fedamole.algorithms.registry`, docs/algorithm.md#adding-an-algorithm).

``ALGORITHMS`` maps the config's ``federation.algorithm`` to ``"module:Class"``; classes are
imported only when a run needs them, so config validation stays cheap.
"""

from __future__ import annotations

from fedamole.algorithms.registry import algorithm_spec, registry

__all__ = ["ALGORITHMS", "get_algorithm"]

ALGORITHMS: dict[str, str] = {name: spec.cls for name, spec in registry().items()}


def get_algorithm(name: str) -> type:
    """Import and return the algorithm class registered under ``name``.

    Raises:
        KeyError: ``name`` is not registered (the message lists the names that are).
    """
    return algorithm_spec(name).load_class()
