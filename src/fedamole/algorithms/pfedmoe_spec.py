"""pFedMoE's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``pfedmoe.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="pfedmoe",
    cls="fedamole.algorithms.pfedmoe:PFedMoE",
    label="pFedMoE",
    table_order=79,
    global_model=False,  # each client's shared + local expert, gated per token
    # a peft folder with both experts (the local one in local/) and the gates
    export=Export(kind="pfedmoe", writer="fedamole.export.writers:write_pfedmoe"),
)
