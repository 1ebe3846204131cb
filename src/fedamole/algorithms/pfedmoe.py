"""pFedMoE (Yi et al., 2024, arXiv 2402.01350): a shared LoRA expert averaged over all clients, a
local LoRA expert, and a local per-token gate over the two (docs/algorithm.md#pfedmoe).

Per target module a client holds

- the **shared** expert (peft adapter ``default``): the server broadcasts it, the client trains it
  and uploads it, the server averages it over all accepted clients (A and B separately, as
  FedIT: :class:`~.lora_strategy.LoRAStrategy`);
- a **local** expert of the same shape (adapter ``local``): trained by the client, never sent;
  every client draws it from ``run.seed + 1`` (:meth:`~.lora_strategy.LoRAStrategy.private_init`);
- a **gate**, a bias-free float32 linear map ``d_in -> 2`` on the layer's input, kept local and
  zero at the start (each expert weighted 1/2): per token ``g = softmax(G x)`` and
  ``y = W x + g_1 (alpha/r) B_sh A_sh x + g_2 (alpha/r) B_loc A_loc x``. It is FedALT's mixer
  (:func:`~.fedalt.install_mixers`) on the two experts.

All three are trained together in each round (the paper trains its gate and both experts end to
end); only the shared expert travels. The paper mixes feature extractors of a small and a large
model per sample; here both experts are LoRA adapters of the same rank on one backbone, gated per
token.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from fedamole.algorithms.base import ClientContext, ClientJob
from fedamole.algorithms.fedalt import (
    install_mixers,
    mixer_parameters,
    mixer_state,
    set_mixer_state,
)
from fedamole.algorithms.lora_common import (
    DEFAULT_ADAPTER,
    install_lora,
    lora_parameters,
)
from fedamole.algorithms.lora_strategy import LoRAStrategy, train_adapter

__all__ = ["LOCAL_EXPERT", "PFedMoE"]

LOCAL_EXPERT = "local"
"""The peft adapter name of the local expert."""


class PFedMoE(LoRAStrategy):
    """A FedAvg'd shared LoRA expert and a local one, mixed per token by a local gate."""

    name = "pfedmoe"
    adapters = (DEFAULT_ADAPTER, LOCAL_EXPERT)

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        model = install_lora(model, self.cfg.baselines, self.adapters)
        return install_mixers(model, (DEFAULT_ADAPTER, LOCAL_EXPERT))

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        super().load(ctx, job)  # the shared expert from the server, the local one kept
        if "gate" not in ctx.state:
            ctx.state["gate"] = {k: torch.zeros_like(v) for k, v in mixer_state(ctx.model).items()}
        set_mixer_state(ctx.model, ctx.state["gate"])

    def train(self, ctx: ClientContext, lr: float) -> dict[str, float]:
        """One round of training of both experts and the gate (the base keeps both adapters)."""
        params = (
            lora_parameters(ctx.model, DEFAULT_ADAPTER)
            + lora_parameters(ctx.model, LOCAL_EXPERT)
            + mixer_parameters(ctx.model)
        )
        result = train_adapter(ctx, self.cfg, params, lr=lr)
        ctx.state["gate"] = mixer_state(ctx.model)
        return {"train/loss": result.loss, "train/tokens": result.tokens, **result.step_metrics()}
