"""FedLEASE's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``fedlease.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fedlease",
    cls="fedamole.algorithms.fedlease:FedLEASE",
    label="FedLEASE",
    table_order=78,
    global_model=False,  # each client's cluster experts under its own router
    # a peft folder with the M experts (expert<k>/ beside the default one) and the routers
    export=Export(kind="fedlease", writer="fedamole.export.writers:write_fedlease"),
)
