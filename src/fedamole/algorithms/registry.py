"""The algorithm registry: one registration per algorithm, beside its code
(docs/algorithm.md#adding-an-algorithm).

Beside each algorithm's module in this package, ``<name>_spec.py`` (``<name>`` its
``federation.algorithm``) holds its registration: ``ALGORITHM``, an :class:`AlgorithmSpec`, is
everything the rest of fedamole knows about the algorithm: its name, its class, its label and row
order in ``fedamole report``, whether its product is a global model, and how ``fedamole export``
writes its clients' models. A spec module imports only this module, so reports read the registry
without importing torch; the class and the export writer are named as ``"module:attr"`` and
imported when a run or an export needs them (:func:`resolve`). Config validation imports no
algorithm code at all: it takes the names from the spec modules' file names
(:mod:`fedamole.config.checks`), which :func:`registry` checks against the names they register.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

__all__ = [
    "SPEC_SUFFIX",
    "AlgorithmSpec",
    "Export",
    "algorithm_names",
    "algorithm_spec",
    "registry",
    "resolve",
]

SPEC_SUFFIX = "_spec"
"""The name ending of the modules holding a registration: ``<name>_spec.py``."""


@dataclass(frozen=True)
class Export:
    """How ``fedamole export`` writes one client's model (:mod:`fedamole.export`).

    Attributes:
        kind: the manifest's ``kind``, which tells :func:`fedamole.export.load_exported` how to
            load it: ``"peft"`` (a LoRA adapter folder), ``"feddpa"``, ``"prompt"`` or ``"mole"``.
        writer: ``"module:function"`` of the writer, called as ``writer(source, folder)`` and
            returning the manifest's extra entries (:mod:`fedamole.export.writers`).
        trained: whether the client's model after local training is checkpointed, and so
            exportable; ``False``: only the global model it received (FDLoRA, the prompt methods),
            which needs ``eval.timing = "global"`` or ``"both"``.
    """

    kind: str
    writer: str
    trained: bool = True


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm's registration.

    Attributes:
        name: its ``federation.algorithm``.
        cls: ``"module:Class"`` of its :class:`~fedamole.algorithms.base.Algorithm`.
        label: its method label in reports (``FedIT``).
        table_order: where its rows go in report tables, smaller first (the paper's baselines,
            then the others, FedAMoLE last).
        global_model: whether its product is the shared global model: evaluated after local
            training it reports as ``<label>-FT`` and its main row is ``test_global``; else the
            personalized models are the product and ``test`` the main row.
        export: how its clients' models are exported, or ``None`` when they cannot be.
        ablations: label suffixes of its ablations that have a table row of their own, placed
            before the plain label (FedAMoLE's ``-R``, ``-H``, ...).
        label_flags: the label suffix a run's config (the ``config.toml`` mapping) adds, e.g.
            ``"-R"`` for a static assignment; ``None``: none.
        settings: the config table of its own settings, ``"baselines"`` or ``"mole"``
            (FedAMoLE); reports tell runs apart by it and ignore the other one.
        targets: the config field naming the layers its adapters wrap, checked against the
            model before a run (:mod:`fedamole.preflight`): ``"baselines.target_modules"``
            (peft's LoRA), ``"mole.target_modules"`` (FedAMoLE's injection), or ``None`` when
            it wraps no layer (the prompt methods).
        secure_kinds: the upload's tensor kinds (the key before the first ``:``) that the server
            only ever averages over every accepted client, and that the Flower engine can so sum
            with SecAgg+ (``flower.secagg``, docs/algorithm.md#secure-aggregation); ``()``: none.
        clear_groups: what else the server averages, over groups of clients, and so sees in the
            clear under SecAgg+ (FedAMoLE's domain experts); ``None``: nothing.
    """

    name: str
    cls: str
    label: str
    table_order: int
    global_model: bool
    export: Export | None = None
    ablations: tuple[str, ...] = ()
    label_flags: Callable[[Mapping[str, Any]], str] | None = None
    settings: str = "baselines"
    targets: str | None = "baselines.target_modules"
    secure_kinds: tuple[str, ...] = ()
    clear_groups: str | None = None

    def load_class(self) -> type:
        """The algorithm class (imports its module, and so torch)."""
        return resolve(self.cls)


def resolve(target: str) -> Any:
    """The attribute ``attr`` of module ``module`` for ``target = "module:attr"``."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def registry() -> Mapping[str, AlgorithmSpec]:
    """Every registered algorithm by name, sorted by name (read-only).

    Raises:
        TypeError: a spec module lacks ``ALGORITHM`` or holds something else.
        ValueError: a spec module registers a name other than its own, two registrations share
            a label or a table order, or one names its class or writer other than as
            ``"module:attr"``.
    """
    package = importlib.import_module(__name__.rpartition(".")[0])
    specs = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.endswith(SPEC_SUFFIX):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            spec = getattr(module, "ALGORITHM", None)
            if not isinstance(spec, AlgorithmSpec):
                raise TypeError(f"{module.__name__}.ALGORITHM must be an AlgorithmSpec")
            if info.name != spec.name + SPEC_SUFFIX:
                raise ValueError(f"{module.__name__} registers {spec.name!r}: rename one of them")
            specs.append(spec)
    return MappingProxyType({s.name: s for s in sorted(checked(specs), key=lambda s: s.name)})


def checked(specs: Iterable[AlgorithmSpec]) -> list[AlgorithmSpec]:
    """``specs`` as a list, after checking that they can live in one registry (see
    :func:`registry` for what raises)."""
    specs = list(specs)
    for field in ("name", "label", "table_order"):
        values = [getattr(s, field) for s in specs]
        twice = sorted({v for v in values if values.count(v) > 1}, key=str)
        if twice:
            raise ValueError(f"algorithms registered with the same {field}: {twice}")
    for s in specs:
        targets = [s.cls] + ([s.export.writer] if s.export else [])
        bad = [t for t in targets if not all(t.partition(":")[::2]) or t.count(":") != 1]
        if bad:
            raise ValueError(f"algorithm {s.name!r}: {bad} must read 'module:attr'")
    return specs


def algorithm_names() -> tuple[str, ...]:
    """The registered ``federation.algorithm`` names, sorted."""
    return tuple(registry())


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The registration of ``name``.

    Raises:
        KeyError: ``name`` is not registered (the message lists the names that are).
    """
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; choose one of {list(registry())}") from None
