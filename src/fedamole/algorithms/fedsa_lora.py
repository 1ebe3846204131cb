"""FedSA-LoRA: share the A matrices, keep the B matrices personal.

Follows Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning" (ICLR
2025, arXiv 2410.01463): each client trains both A and B locally; only A (found to capture general
knowledge) is uploaded and averaged, while B (client-specific knowledge) stays on the client, in
``ctx.state``. After the initial broadcast of the shared init (A, and the zero B) no B ever travels.

Deviations: LoRA only (the paper also applies the idea to rsLoRA and VeRA); all clients take part
every round; averaging is unweighted unless ``federation.weighting = "examples"`` (the paper's
FedAvg weights by data size). With ``eval.timing = "global"`` the "received" model is the
averaged A with the client's own B, the only global model this method has.
"""

from __future__ import annotations

from fedamole.algorithms.lora_common import PARTS
from fedamole.algorithms.lora_strategy import LoRAStrategy

__all__ = ["FedSALoRA"]


class FedSALoRA(LoRAStrategy):
    """A trained and averaged, B trained and kept local."""

    name = "fedsa_lora"
    shared_parts = ("lora_A",)
    trained_parts = PARTS
