"""FedIT-clustered's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``fedit_clustered.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fedit_clustered",
    cls="fedamole.algorithms.fedit_clustered:FedITClustered",
    label="FedIT-clustered",
    table_order=85,
    global_model=False,  # one model per group of clients, fine-tuned by each
    export=Export(kind="peft", writer="fedamole.export.writers:write_peft"),
)
