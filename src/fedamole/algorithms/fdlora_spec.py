"""FDLoRA's registration (:mod:`fedamole.algorithms.registry`); the algorithm is
in ``fdlora.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fdlora",
    cls="fedamole.algorithms.fdlora:FDLoRA",
    label="FDLoRA",
    table_order=40,
    # reported on the received global adapter fused with the private one (the reference's number)
    global_model=True,
    # a plain peft adapter: the received global one fused with the private one by the client's
    # fusion weights; its adapter after local training is not checkpointed
    export=Export(kind="peft", writer="fedamole.export.writers:write_fdlora", trained=False),
)
