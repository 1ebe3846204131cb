"""FedSA-LoRA's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``fedsa_lora.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fedsa_lora",
    cls="fedamole.algorithms.fedsa_lora:FedSALoRA",
    label="FedSA-LoRA",
    table_order=60,
    global_model=False,  # B stays personal
    export=Export(kind="peft", writer="fedamole.export.writers:write_peft"),
    secure_kinds=("lora_A", "lora_B"),  # LoRAStrategy.merge: a mean over all
)
