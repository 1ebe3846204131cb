"""FFA-LoRA: federated LoRA with the A matrices frozen at their shared initialization.

Follows Sun, Li, Li and Ding, "Improving LoRA in Privacy-preserving Federated Learning" (ICLR 2024,
arXiv 2403.12313): A is drawn once by the server from the run seed, broadcast with the (zero) B in
the first round, and never trained nor sent again; clients train only B, and the server averages
B. Averaging B with a common, fixed A is exact (the mean of ``B_c A`` is ``mean(B_c) A``), which is
the paper's point, and it halves the traffic.

Deviations: no differential privacy (the paper's DP-SGD experiments are out of scope); the scaling
``alpha/r`` comes from ``baselines.lora_alpha`` (the paper tunes a larger alpha for FFA-LoRA); A is
Kaiming-uniform like peft's default init; averaging is unweighted unless
``federation.weighting = "examples"``.
"""

from __future__ import annotations

from fedamole.algorithms.lora_strategy import LoRAStrategy

__all__ = ["FFALoRA"]


class FFALoRA(LoRAStrategy):
    """Only B is trained and averaged; A stays at the broadcast init."""

    name = "ffa_lora"
    shared_parts = ("lora_B",)
    trained_parts = ("lora_B",)
