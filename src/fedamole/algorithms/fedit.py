"""FedIT: federated instruction tuning, FedAvg on one LoRA adapter (docs/algorithm.md#baselines).

Follows Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning"
(ICASSP 2024, arXiv 2305.05644) as run by the FedAMoLE reference (``fed_avg``): every client trains
the whole adapter (A and B) from the global one for ``train.steps`` Adam steps, uploads it, and the
server averages A and B over the clients (:class:`~.lora_strategy.LoRAStrategy`).

The paper's two reported variants are one algorithm evaluated at two moments (``eval.timing``):
FedIT-FT = after local training (``personalized``), plain FedIT = the global model after
aggregation (``global``); ``both`` logs the two, as the reference's ``--do_ft``.

Deviations: the reference averages without weights (kept as the default; FedIT's FedAvg weights by
data size, available as ``federation.weighting = "examples"``); all clients take part every round
(FedIT samples clients); adapters are float32 (the reference trains bf16 ones).
"""

from __future__ import annotations

from fedamole.algorithms.lora_common import PARTS
from fedamole.algorithms.lora_strategy import LoRAStrategy

__all__ = ["FedIT"]


class FedIT(LoRAStrategy):
    """FedAvg of a whole LoRA adapter: A and B trained and averaged."""

    name = "fedit"
    shared_parts = PARTS
    trained_parts = PARTS
