"""FlexLoRA's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``flexlora.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="flexlora",
    cls="fedamole.algorithms.flexlora:FlexLoRA",
    label="FlexLoRA",
    table_order=75,
    global_model=False,  # each client's rank-r_i projection of the aggregate, fine-tuned by it
    # a plain peft adapter of the client's own rank r_i (alpha / r_i scaling)
    export=Export(kind="peft", writer="fedamole.export.writers:write_flexlora"),
)
