"""What an export is made of: its file names, the manifest's format, and which algorithms export
how, read from their registrations (:class:`~fedamole.algorithms.registry.Export`). The formats
themselves are described in :mod:`fedamole.export`."""

from __future__ import annotations

from fedamole.algorithms.registry import algorithm_spec, registry

__all__ = [
    "FEDALT_MIXERS",
    "FEDAMOLE_PREFIXES",
    "FEDDPA_DIRECTION",
    "FEDLEASE_ROUTERS",
    "FORMAT",
    "MANIFEST",
    "MOLE_STATE",
    "PFEDMOE_GATES",
    "README",
    "VERSION",
    "export_kind",
    "exportable_algorithms",
]

MANIFEST = "fedamole_export.json"
FEDDPA_DIRECTION = "feddpa_direction.safetensors"
FEDALT_MIXERS = "fedalt_mixers.safetensors"
FEDLEASE_ROUTERS = "fedlease_routers.safetensors"
MOLE_STATE = "mole_state.safetensors"
PFEDMOE_GATES = "pfedmoe_gates.safetensors"
README = "README.md"
FORMAT, VERSION = "fedamole-export", 1
# fedamole's own backbones: no hub id, only fedamole.models loads them.
FEDAMOLE_PREFIXES = ("embedded:", "tiny:")


def export_kind(algorithm: str) -> str | None:
    """The manifest ``kind`` an algorithm's client models are exported as (its registration's:
    ``"peft"``, ``"feddpa"``, ``"prompt"``, ``"mole"``), or ``None`` when they cannot be.

    Raises:
        KeyError: ``algorithm`` is not registered.
    """
    export = algorithm_spec(algorithm).export
    return None if export is None else export.kind


def exportable_algorithms(*, trained: bool = False) -> list[str]:
    """The algorithms :func:`~fedamole.export.export_client` can export, sorted; with
    ``trained``, only those whose model after local training is checkpointed (the others, FDLoRA
    and the prompt methods, export the received global model and need ``eval.timing = "global"``
    or ``"both"``)."""
    return sorted(
        name
        for name, spec in registry().items()
        if spec.export is not None and (spec.export.trained or not trained)
    )
