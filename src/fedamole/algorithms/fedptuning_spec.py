"""FedPTuning's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``p_tuning.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fedptuning",
    cls="fedamole.algorithms.p_tuning:FedPTuning",
    label="FedPTuning",
    table_order=30,
    global_model=True,
    # only the received global prompt encoder is checkpointed
    export=Export(kind="prompt", writer="fedamole.export.writers:write_prompt", trained=False),
    targets=None,  # virtual tokens: no layer is wrapped
)
