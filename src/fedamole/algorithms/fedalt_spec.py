"""FedALT's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``fedalt.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fedalt",
    cls="fedamole.algorithms.fedalt:FedALT",
    label="FedALT",
    table_order=77,
    global_model=False,  # each client's individual + rest-of-world LoRA, mixed per token
    # a peft folder with both adapters (the rest-of-world one in row/) and the mixers
    export=Export(kind="fedalt", writer="fedamole.export.writers:write_fedalt"),
)
