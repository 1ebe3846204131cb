"""HetLoRA's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``hetlora.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="hetlora",
    cls="fedamole.algorithms.hetlora:HetLoRA",
    label="HetLoRA",
    table_order=76,
    global_model=False,  # each client's truncation of the global adapter, fine-tuned by it
    # a plain peft adapter of the client's current rank (alpha / r_max scaling)
    export=Export(kind="peft", writer="fedamole.export.writers:write_hetlora"),
)
