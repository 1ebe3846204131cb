"""FFA-LoRA's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``ffa_lora.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="ffa_lora",
    cls="fedamole.algorithms.ffa_lora:FFALoRA",
    label="FFA-LoRA",
    table_order=50,
    global_model=True,
    export=Export(kind="peft", writer="fedamole.export.writers:write_peft"),
    secure_kinds=("lora_A", "lora_B"),  # LoRAStrategy.merge: a mean over all
)
