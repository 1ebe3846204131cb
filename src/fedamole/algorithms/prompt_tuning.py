"""FedPrompt (docs/algorithm.md#baselines): federated prompt tuning via peft; the soft-prompt
plumbing FedPTuning (:mod:`fedamole.algorithms.p_tuning`) shares.

Both algorithms are FedAvg over the trainable parameters of a peft prompt-learning adapter:

- **FedPrompt** ("fedprompt"): peft prompt tuning (``PromptTuningConfig``), initialised from the
  dataset's soft-prompt text (:func:`~fedamole.data.prompts.soft_prompt_init_text`);
  the number of virtual tokens is that text's token length, BOS included where the tokenizer adds
  one. The prompt embedding table is the only trainable tensor and is averaged.
- **FedPTuning** ("fedptuning"): peft P-tuning (``PromptEncoderConfig``) with
  ``baselines.prompt_tokens`` virtual tokens and an MLP prompt encoder of hidden size
  ``baselines.prompt_encoder_hidden``. By default the *whole* encoder (input embedding table and
  MLP) is trained and averaged. ``baselines.ptuning.reference_quirk = true`` reproduces the
  reference instead (see :class:`~fedamole.algorithms.p_tuning.FedPTuning`).

Round structure (:meth:`~fedamole.algorithms.base.RoundPlan.for_round`, as the LoRA baselines):
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

Virtual tokens sit right after each row's left padding: see
:class:`~fedamole.algorithms.virtual_tokens.VirtualTokenLM`.
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
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedamole.algorithms.base import (
    ClientContext,
    ClientJob,
    RoundPlan,
    RoundSummary,
    RoundTemplate,
    evaluate_test,
    prefixed,
    screen_updates,
)
from fedamole.algorithms.lora_strategy import train_adapter
from fedamole.algorithms.virtual_tokens import VirtualTokenLM
from fedamole.config import Config
from fedamole.data.prompts import soft_prompt_init_text
from fedamole.federated.aggregation import average_tensors, check_update, spec_of
from fedamole.federated.messages import ClientMessage, ServerMessage
from fedamole.models import load_tokenizer

__all__ = ["PROMPT_KIND", "FedPrompt", "prompt_encoder", "tensors_of_kind"]

log = logging.getLogger(__name__)

PROMPT_KIND = "prompt"
"""Message kind of the averaged prompt tensors: ``"prompt:<parameter name>"``."""


class FedPrompt(RoundTemplate):
    """FedAvg over a peft soft prompt (server state: the global prompt tensors)."""

    name = "fedprompt"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.num_clients = cfg.federation.num_clients
        self.global_params: dict[str, torch.Tensor] = {}  # message key -> tensor

    # ---------------------------------------------------------------------------------- server side

    def peft_config(self, tokenizer: PreTrainedTokenizerBase, tokenizer_dir: str) -> PeftConfig:
        """Prompt tuning initialised from the dataset's soft-prompt text."""
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
        plan = RoundPlan.for_round(self.cfg, rnd)
        tensors = dict(self.global_params) if plan.active else {}
        config = plan.to_config()
        return {c: ServerMessage(rnd, c, tensors, config) for c in range(self.num_clients)}

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        if not 1 <= rnd <= self.cfg.federation.rounds:
            return RoundSummary(rnd, tuple(sorted(updates)))
        expected = spec_of(self.global_params)
        accepted, rejected = screen_updates(
            rnd,
            updates,
            # only the prompt tensors: FedPTuning's relay rides along in the same message
            lambda client, msg: check_update(
                {k: v for k, v in msg.tensors.items() if k in expected}, expected
            ),
            weighted=self.cfg.federation.weighting == "examples",
        )
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

    def load(self, ctx: ClientContext, job: ClientJob) -> None:
        if job.msg.tensors:
            self.load_prompt(ctx.model, job.msg)

    def evaluate_received(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        with self.received_model(ctx.model, job.msg):
            return prefixed("received", evaluate_test(ctx, self.cfg))

    def train_round(self, ctx: ClientContext, job: ClientJob) -> dict[str, float]:
        params = list(_prompt_parameters(ctx.model).values())
        result = train_adapter(ctx, self.cfg, params, lr=job.plan.lr)
        return {"train/loss": result.loss, "train/tokens": result.tokens, **result.step_metrics()}

    def upload(self, ctx: ClientContext, job: ClientJob) -> dict[str, torch.Tensor]:
        return self.upload_prompt(ctx.model, job.msg) if job.plan.upload else {}

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
