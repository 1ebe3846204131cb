"""Local-only training's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``local.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="local",
    cls="fedamole.algorithms.local:LocalOnly",
    label="Local",
    table_order=80,
    global_model=False,
    export=Export(kind="peft", writer="fedamole.export.writers:write_peft"),
)
