"""FedPrompt (SPEC.md section 6 item 2): federated prompt tuning via peft; the soft-prompt plumbing
FedPTuning (:mod:`fedamole.algorithms.p_tuning`) shares.

Both algorithms are FedAvg over the trainable parameters of a peft prompt-learning adapter:

- **FedPrompt** ("fedprompt"): peft prompt tuning (``PromptTuningConfig``), initialised from the
  dataset's soft-prompt text (SPEC.md 5.3, :func:`~fedamole.data.prompts.soft_prompt_init_text`);
  the number of virtual tokens is that text's token length, BOS included where the tokenizer adds
  one. The prompt embedding table is the only trainable tensor and is averaged.
- **FedPTuning** ("fedptuning"): peft P-tuning (``PromptEncoderConfig``) with
  ``baselines.prompt_tokens`` virtual tokens and an MLP prompt encoder of hidden size
  ``baselines.prompt_encoder_hidden``. By default the *whole* encoder (input embedding table and
  MLP) is trained and averaged. ``baselines.ptuning_reference_quirk = true`` reproduces the
  reference instead (see :class:`~fedamole.algorithms.p_tuning.FedPTuning`).

Round structure (the LoRA baselines' :func:`~fedamole.algorithms.lora_strategy.round_plan`):
every round ``1..R`` each client loads the global prompt (sent every round), trains it with a
fresh Adam, uploads it, and the server averages the uploads (unweighted, as the reference, or by
training-set size with ``federation.weighting = "examples"``) after every round, the last
included; updates with wrong keys, shapes or NaN/Inf are rejected with a logged reason.
``eval.timing = "personalized"`` evaluates each client right after its local training (the
reference's "-FT" variant, ``test/...`` and ``eval/loss``); ``"global"`` evaluates the received
global model before training (``received/...``, logged by the engine as ``test_global`` of the
previous round, with an evaluation-only round ``R+1``), the reference's plain variant; ``"both"``
is the reference's ``--do_ft``. Round 0 evaluates the initial prompt under ``test/`` unless the
timing is ``"global"`` (round 1's ``received/`` covers it). Client state: the batch-stream
position only; any dropout of the backbone is seeded per ``(seed, round, client)``, so a resumed
run equals an uninterrupted one. Initial prompts are drawn under ``run.seed`` (forked RNG).

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

import contextlib
import logging
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from peft import (
    PeftConfig,
    PeftModel,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms.base import (
    ClientContext,
    RoundSummary,
    client_seed,
    eval_loss,
    evaluate_test,
)
from fedamole.algorithms.lora_strategy import round_plan, train_adapter
from fedamole.config import Config
from fedamole.data.prompts import soft_prompt_init_text
from fedamole.federated.aggregation import average_tensors, check_update, spec_of
from fedamole.federated.messages import ClientMessage, ServerMessage
from fedamole.models import load_tokenizer

__all__ = ["PROMPT_KIND", "FedPrompt", "VirtualTokenLM", "prompt_encoder", "tensors_of_kind"]

log = logging.getLogger(__name__)

PROMPT_KIND = "prompt"
"""Message kind of the averaged prompt tensors: ``"prompt:<parameter name>"``."""


class VirtualTokenLM(nn.Module):
    """A causal LM with a peft prompt-learning adapter, virtual tokens placed after the padding.

    ``forward`` and ``generate`` take the same left-padded ``input_ids``/``attention_mask`` as the
    bare backbone; row ``b`` with ``p_b`` pad columns becomes ``[pad]*p_b + prompt + tokens``, with
    attention on the prompt and the tokens and positions ``0, 1, ...`` from the prompt's first
    virtual token on. ``position_ids`` passed in are ignored (they are recomputed that way).

    Args:
        peft_model: a ``PeftModel`` with a prompt-tuning or P-tuning adapter (no prefix tuning).
    """

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


class FedPrompt:
    """FedAvg over a peft soft prompt (server state: the global prompt tensors)."""

    name = "fedprompt"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.num_clients = cfg.federation.num_clients
        self.global_params: dict[str, torch.Tensor] = {}  # message key -> tensor

    # ---------------------------------------------------------------------------------- server side

    def peft_config(self, tokenizer: PreTrainedTokenizerBase, tokenizer_dir: str) -> PeftConfig:
        """Prompt tuning initialised from the dataset's soft-prompt text (SPEC.md 5.3, 6.2)."""
        text = soft_prompt_init_text(self.cfg.data.dataset)
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=text,
            num_virtual_tokens=len(tokenizer(text)["input_ids"]),
            tokenizer_name_or_path=tokenizer_dir,
        )

    def prepare_model(self, model: PreTrainedModel) -> VirtualTokenLM:
        tokenizer = load_tokenizer(self.cfg.model.name)
        # peft's TEXT init reloads the tokenizer by path: hand it a saved copy (works for hub ids,
        # local folders, the embedded model and the in-memory tiny tokenizer alike).
        with tempfile.TemporaryDirectory() as tokenizer_dir, torch.random.fork_rng(devices=[]):
            tokenizer.save_pretrained(tokenizer_dir)
            torch.manual_seed(self.cfg.run.seed)
            peft_model = get_peft_model(model, self.peft_config(tokenizer, tokenizer_dir))
        return VirtualTokenLM(peft_model)

    def setup(self, model: VirtualTokenLM) -> None:
        self.global_params = self.upload_prompt(model)

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        config = round_plan(self.cfg, rnd)
        active = config["train"] or config["eval_received"] or config["eval_personalized"]
        tensors = dict(self.global_params) if active else {}
        return {c: ServerMessage(rnd, c, tensors, config) for c in range(self.num_clients)}

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        if not 1 <= rnd <= self.cfg.federation.rounds:
            return RoundSummary(rnd, tuple(sorted(updates)))
        weighted = self.cfg.federation.weighting == "examples"
        accepted, rejected = _screen(rnd, updates, self.global_params, weighted=weighted)
        if accepted:
            self.global_params = _average(accepted, self.global_params, self.cfg)
        return RoundSummary(rnd, tuple(accepted), rejected)

    def assignment_record(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"global": self.global_params}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_params = dict(state["global"])

    # ---------------------------------------------------------------------------------- client side

    def local_update(self, rnd: int, msg: ServerMessage, ctx: ClientContext) -> ClientMessage:
        cfg, metrics = self.cfg, {}
        if msg.tensors:
            self.load_prompt(ctx.model, msg)
        if msg.config["eval_received"]:
            with self.received_model(ctx.model, msg):
                metrics.update({f"received/{k}": v for k, v in evaluate_test(ctx, cfg).items()})
        if msg.config["train"]:
            torch.manual_seed(client_seed(cfg.run.seed, rnd, ctx.client_id))
            metrics.update(_train(ctx, cfg, float(msg.config["lr"])))
        tensors = self.upload_prompt(ctx.model, msg) if msg.config["upload"] else {}
        if msg.config["eval_personalized"]:
            metrics.update({f"test/{k}": v for k, v in evaluate_test(ctx, cfg).items()})
            if ctx.data.eval:
                metrics["eval/loss"] = eval_loss(ctx, cfg)
        config = {"num_examples": len(ctx.data.train)}
        return ClientMessage(rnd, ctx.client_id, tensors, config, metrics)

    def load_prompt(self, model: VirtualTokenLM, msg: ServerMessage) -> None:
        """Copy the received global prompt tensors into the model's prompt encoder."""
        params = _prompt_parameters(model)
        with torch.no_grad():
            for key, value in tensors_of_kind(msg.tensors, PROMPT_KIND).items():
                params[key].copy_(value)

    def upload_prompt(
        self, model: VirtualTokenLM, msg: ServerMessage | None = None
    ) -> dict[str, torch.Tensor]:
        """The tensors a client uploads (and the server's initial global prompt: ``msg=None``)."""
        return {
            f"{PROMPT_KIND}:{name}": p.detach().cpu().clone()
            for name, p in _prompt_parameters(model).items()
        }

    def received_model(
        self, model: VirtualTokenLM, msg: ServerMessage
    ) -> contextlib.AbstractContextManager:
        """A context in which the model is the received global one: here what
        :meth:`load_prompt` installed."""
        return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# Helpers


def prompt_encoder(model: VirtualTokenLM) -> nn.Module:
    """The active adapter's peft prompt encoder (``PromptEmbedding`` or ``PromptEncoder``)."""
    peft_model = model.peft_model
    return peft_model.prompt_encoder[peft_model.active_adapter]


def _prompt_parameters(model: VirtualTokenLM) -> dict[str, nn.Parameter]:
    """Every parameter of the prompt encoder by name (``embedding.weight``, ``mlp_head.0.weight``,
    ...); the only trainable tensors."""
    return dict(prompt_encoder(model).named_parameters())


def tensors_of_kind(tensors: Mapping[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """``{rest: tensor}`` for the keys ``"<kind>:<rest>"``."""
    prefix = f"{kind}:"
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _screen(
    rnd: int,
    updates: Mapping[int, ClientMessage],
    reference: Mapping[str, torch.Tensor],
    *,
    weighted: bool,
) -> tuple[dict[int, ClientMessage], dict[int, str]]:
    """Split updates into accepted ones and rejected ones (with the reason): the prompt tensors
    must match ``reference`` and be finite; a weighted mean needs a positive example count."""
    expected = spec_of(reference)
    accepted, rejected = {}, {}
    for client, msg in sorted(updates.items()):
        problems = check_update({k: v for k, v in msg.tensors.items() if k in expected}, expected)
        count = msg.config.get("num_examples")
        if weighted and not (isinstance(count, int) and count > 0):
            problems.append(f"num_examples = {count!r}: weighting by examples needs a count > 0")
        if problems:
            rejected[client] = "; ".join(problems)
            log.warning("round %d: rejected client %d: %s", rnd, client, rejected[client])
        else:
            accepted[client] = msg
    return accepted, rejected


def _average(
    accepted: Mapping[int, ClientMessage], reference: Mapping[str, torch.Tensor], cfg: Config
) -> dict[str, torch.Tensor]:
    clients = sorted(accepted)
    weights = None
    if cfg.federation.weighting == "examples":
        weights = [float(accepted[c].config["num_examples"]) for c in clients]
    return {
        key: average_tensors([accepted[c].tensors[key] for c in clients], weights)
        for key in reference
    }


def _train(ctx: ClientContext, cfg: Config, lr: float) -> dict[str, float]:
    params = list(_prompt_parameters(ctx.model).values())
    result = train_adapter(ctx, cfg, params, lr=lr)
    return {"train/loss": result.loss, "train/tokens": result.tokens}
