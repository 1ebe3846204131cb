"""FedPrompt's registration (:mod:`fedamole.algorithms.registry`); the algorithm is in
``prompt_tuning.py``."""

from fedamole.algorithms.registry import AlgorithmSpec, Export

ALGORITHM = AlgorithmSpec(
    name="fedprompt",
    cls="fedamole.algorithms.prompt_tuning:FedPrompt",
    label="FedPrompt",
    table_order=20,
    global_model=True,
    # only the received global prompt is checkpointed
    export=Export(kind="prompt", writer="fedamole.export.writers:write_prompt", trained=False),
    targets=None,  # virtual tokens: no layer is wrapped
    secure_kinds=("prompt",),  # prompt_tuning._average: a mean over all
)
