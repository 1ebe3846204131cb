"""The causal LM wrapper that places a peft prompt-learning adapter's virtual tokens correctly.

Virtual tokens and padding: peft's prompt-learning forward prepends the virtual tokens in front of
the *left padding* and ignores ``position_ids``, so a padded row would see its soft prompt further
away than the same row unpadded (the reference never noticed: its batch size is 1).
:class:`VirtualTokenLM` wraps the peft model and inserts the virtual tokens right before each row's
first real token, with positions counted over real and virtual tokens, and returns logits aligned
with the input columns; training, answer-choice scoring and generation then work unchanged and a
padded row scores like the same row alone (tested against peft's own forward and generate on
unpadded rows).
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import GenerationConfig, PreTrainedModel

__all__ = ["VirtualTokenLM"]


class VirtualTokenLM(nn.Module):
    """A causal LM with a peft prompt-learning adapter, virtual tokens placed after the padding.

    ``forward`` and ``generate`` take the same left-padded ``input_ids``/``attention_mask`` as the
    bare backbone; row ``b`` with ``p_b`` pad columns becomes ``[pad]*p_b + prompt + tokens``, with
    attention on the prompt and the tokens and positions ``0, 1, ...`` from the prompt's first
    virtual token on. ``position_ids`` passed in are ignored (they are recomputed that way).

    Args:
        peft_model: a ``PeftModel`` with a prompt-tuning or P-tuning adapter (no prefix tuning).
    """

    # Evaluation may not run a shared prefix once and continue rows from its key/value cache: the
    # virtual tokens go before each row's first real token (fedamole.evaluation).
    supports_prefix_cache = False

    def __init__(self, peft_model: PeftModel):
        super().__init__()
        if not peft_model.active_peft_config.is_prompt_learning:
            raise ValueError("VirtualTokenLM needs a prompt-learning peft model")
        self.peft_model = peft_model

    @property
    def base(self) -> PreTrainedModel:
        return self.peft_model.get_base_model()

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.peft_model.active_peft_config.num_virtual_tokens)

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def generation_config(self) -> GenerationConfig:
        return self.base.generation_config

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        self.base.generation_config = value

    def _with_prompt(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input embeddings (B, V+T, d), attention mask (B, V+T) and positions (B, V+T)."""
        batch, width = input_ids.shape
        v, device = self.num_virtual_tokens, input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pads = width - attention_mask.sum(-1, keepdim=True)  # (B, 1)
        cols = torch.arange(width, device=device)[None]  # (1, T)
        if not torch.equal(attention_mask.bool(), cols >= pads):
            raise ValueError("VirtualTokenLM needs left-padded batches (mask 0...0 1...1 per row)")
        words = self.base.get_input_embeddings()(input_ids)  # (B, T, d)
        prompts = self.peft_model.get_prompt(batch_size=batch).to(words.dtype)  # (B, V, d)
        joined = torch.cat([prompts, words], dim=1)  # (B, V+T, d): prompt, then the row as given
        idx = torch.arange(v + width, device=device)[None].expand(batch, -1)  # (B, V+T)
        # output column i takes: pad i (i < p) -> joined[V+i]; virtual token i-p (p <= i < p+V)
        # -> joined[i-p]; token i-V (i >= p+V) -> joined[i]
        src = torch.where(idx < pads, v + idx, torch.where(idx < pads + v, idx - pads, idx))
        embeds = joined.gather(1, src[..., None].expand(-1, -1, joined.shape[-1]))  # (B, V+T, d)
        mask = (idx >= pads).to(attention_mask.dtype)  # (B, V+T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, V+T)
        return embeds, mask, positions

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> Any:
        """The backbone's output with logits (B, K, vocab) for the last ``K`` input columns
        (``K = logits_to_keep``, or all ``T`` columns when 0). Columns of real tokens hold their
        logits; columns of left padding hold meaningless values (they are never labelled)."""
        del position_ids  # recomputed over real + virtual tokens
        embeds, mask, positions = self._with_prompt(input_ids, attention_mask)
        keep = logits_to_keep or input_ids.shape[1]
        return self.base(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        )

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """``input_ids`` (B, T) followed by the generated tokens (B, new), like ``generate`` of a
        decoder-only model called with ``input_ids``; ``kwargs`` go to the backbone's
        ``generate``."""
        embeds, mask, _ = self._with_prompt(input_ids, attention_mask)
        new = self.base.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # (B, new)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)
