"""FedDPA's registration (:mod:`fedamole.algorithms.registry`); the algorithm is
in ``feddpa.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="feddpa",
    cls="fedamole.algorithms.feddpa:FedDPA",
    label="FedDPA",
    table_order=70,
    global_model=False,  # the private adapter mixed in per instance is the product
    # two peft adapters and the mixing direction
    export=Export(kind="feddpa", writer="fedamole.export.writers:write_feddpa"),
    secure_kinds=("lora_A", "lora_B"),  # LoRAStrategy.merge: a mean over all
)
