"""Local-only training: each client fine-tunes its own LoRA adapter; nothing is ever sent.

The standard lower reference point of personalized FL (listed among FedAMoLE's baselines, not in its
public code; docs/algorithm.md#baselines). Every client starts from the same adapter init as the
federated baselines, drawn from ``run.seed`` by the client itself instead of being broadcast (so
messages carry no tensors and ``comm.jsonl`` records no bytes), then trains A and B on its own data
for ``train.steps`` steps per round, exactly as FedIT's local step. The "rounds" only pace the
evaluation and the learning-rate decay. With ``eval.timing = "global"`` the "received" model is the
client's own adapter before this round's training.
"""

from __future__ import annotations

from fedamole.algorithms.lora_common import PARTS
from fedamole.algorithms.lora_strategy import LoRAStrategy

__all__ = ["LocalOnly"]


class LocalOnly(LoRAStrategy):
    """No communication: the adapter is trained and kept by each client."""

    name = "local"
    shared_parts = ()
    trained_parts = PARTS
    broadcast_init = False
