"""FedAMoLE's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``fedamole.py``. Its ablations are config flags, and each one the run sets is a suffix of the
report label (docs/algorithm.md#reported-metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedamole.algorithms.registry import AlgorithmSpec, Export


def ablation_flags(config: Mapping[str, Any]) -> str:
    """The label suffix of a run's ablations: ``-R`` static random assignment, ``-Rand`` random
    re-drawn each round, ``-Oracle``, ``+received``/``+received-stats``/``+retention`` (RSEA
    variants), ``-H`` linear router, ``-S`` no shared expert, ``-Homo`` homogeneous architecture,
    ``-DP`` the paper's privacy noise, ``-GDP`` the Gaussian mechanism on the statistics
    (docs/privacy.md); in that order. ``federation.privacy = true`` in an old run's config is
    ``"paper"``."""
    fed, mole = config.get("federation", {}), config.get("mole", {})
    flags = [
        ("-R", fed.get("assignment") == "static"),
        ("-Rand", fed.get("assignment") == "random"),
        ("-Oracle", fed.get("assignment") == "oracle"),
        ("+received", mole.get("rsea_token_proj") == "received"),
        ("+received-stats", mole.get("rsea_stats") == "received"),
        ("+retention", float(mole.get("rsea_retention", 0.0)) > 0),
        ("-H", mole.get("router") == "linear"),
        ("-S", mole.get("shared_expert") is False),
        ("-Homo", fed.get("homogeneous") is True),
        ("-DP", fed.get("privacy") in (True, "paper")),
        ("-GDP", fed.get("privacy") == "gaussian"),
    ]
    return "".join(flag for flag, on in flags if on)


ALGORITHM = AlgorithmSpec(
    name="fedamole",
    cls="fedamole.algorithms.fedamole:FedAMoLE",
    label="FedAMoLE",
    table_order=100,  # last: the method the tables compare against the baselines
    global_model=False,
    export=Export(kind="mole", writer="fedamole.export.writers:write_mole"),
    ablations=("-R", "-Rand", "-H", "-S", "-Homo", "-DP", "-GDP"),
    label_flags=ablation_flags,
    settings="mole",
    targets="mole.target_modules",
    secure_kinds=("token_proj", "shared"),  # ExpertBank.fold: means over every client
    clear_groups="each domain expert, averaged among its `mole.clients_per_expert` holders",
)
