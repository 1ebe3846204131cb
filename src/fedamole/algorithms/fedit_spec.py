"""FedIT's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in ``fedit.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fedit",
    cls="fedamole.algorithms.fedit:FedIT",
    label="FedIT",
    table_order=10,
    global_model=True,
    export=Export(kind="peft", writer="fedamole.export.writers:write_peft"),
    secure_kinds=("lora_A", "lora_B"),  # LoRAStrategy.merge: a mean over all
)
