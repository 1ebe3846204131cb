"""pFedMoE's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``pfedmoe.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="pfedmoe",
    cls="fedamole.algorithms.pfedmoe:PFedMoE",
    label="pFedMoE",
    table_order=79,
    global_model=False,  # each client's shared + local expert, gated per token
    secure_kinds=("lora_A", "lora_B"),  # the shared expert: LoRAStrategy.merge, a mean over all
    # a peft folder with both experts (the local one in local/) and the gates
    export=Export(kind="pfedmoe", writer="fedamole.export.writers:write_pfedmoe"),
)
