"""FedPTuning (docs/algorithm.md#baselines): federated P-tuning via peft, optionally with the
reference's aggregation quirk.

peft P-tuning (``PromptEncoderConfig``): ``baselines.prompt_tokens`` virtual tokens whose input
embedding table ``E`` (V, d) goes through an MLP prompt encoder of hidden size
``baselines.prompt_encoder_hidden``. Everything else (the :class:`VirtualTokenLM` wrapper, the
round plan, evaluation timing, aggregation, rejection) is FedPrompt's
(:mod:`fedamole.algorithms.prompt_tuning`).

**Correct version** (default): the whole prompt encoder, ``E`` and the MLP, is trained by each
client and averaged by the server (message keys ``prompt:embedding.weight``,
``prompt:mlp_head.<i>.weight``/``bias``).

**Reference quirk** (``baselines.ptuning.reference_quirk = true``;
docs/algorithm.md#deviations-from-the-reference-implementation): peft's state-dict helpers save the
prompt encoder's *output* ``MLP(E)`` (V, d); that is what clients upload (``prompt:embeddings``) and
the server averages, and each client writes the received average into the *input* table ``E`` (so
the MLP is applied again on top every round; the initial global prompt is likewise ``MLP0(E0)``).
The MLP is never averaged: in the reference it lives on the one model object shared by all clients,
and each client continues training it where the previous client left it. Here:

- On the embedded engine clients run in id order on one shared model, so the MLP is likewise
  carried from client to client by the model object, exactly as in the reference.
- To make that state explicit, checkpointed and resumable, the last client (id ``N-1``) uploads
  its MLP (message kind ``prompt_mlp``) and the server relays it: client 0 loads it before
  training (a no-op in an uninterrupted run, the restore after a resume), and with
  ``global``/``both`` timing every client evaluates the received prompt with it, i.e. with the
  MLP as it was after the previous round, as the reference evaluates after aggregation (the
  client's own MLP is put back before it trains).

Differences from the reference in quirk mode: the relayed MLP is counted in ``comm.jsonl`` (kind
``prompt_mlp``; the reference moves nothing, the sharing is a side effect of one process); if
client ``N-1`` fails in a round, the relay keeps the previous MLP, so the next round restarts the
MLP from there (the reference cannot lose a client); on a multi-process engine (Flower) each
process's model carries its own MLP between the clients it runs, so the sequential chain is only
reproduced by the embedded engine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from peft import (
    PeftConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    TaskType,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedamole.algorithms.base import RoundPlan, RoundSummary
from fedamole.algorithms.prompt_tuning import (
    PROMPT_KIND,
    FedPrompt,
    prompt_encoder,
    tensors_of_kind,
)
from fedamole.algorithms.virtual_tokens import VirtualTokenLM
from fedamole.config import Config
from fedamole.federated.aggregation import check_update, spec_of
from fedamole.federated.messages import ClientMessage, ServerMessage

__all__ = ["RELAY_KIND", "FedPTuning"]

log = logging.getLogger(__name__)

RELAY_KIND = "prompt_mlp"
"""Message kind of the relayed MLP (reference quirk only): ``"prompt_mlp:<i>.weight"``."""


class FedPTuning(FedPrompt):
    """FedAvg over a peft P-tuning prompt encoder; the reference's quirk as an option (see the
    module docstring)."""

    name = "fedptuning"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.quirk = cfg.baselines.ptuning.reference_quirk
        self.relay: dict[str, torch.Tensor] = {}  # quirk only: "prompt_mlp:<name>" -> tensor

    def peft_config(self, tokenizer: PreTrainedTokenizerBase, tokenizer_dir: str) -> PeftConfig:
        """P-tuning with an MLP prompt encoder."""
        b = self.cfg.baselines
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=b.prompt_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP,
            encoder_hidden_size=b.prompt_encoder_hidden,
        )

    def setup(self, model: VirtualTokenLM) -> None:
        super().setup(model)
        if self.quirk:
            self.relay = _mlp_tensors(model)

    def configure_round(self, rnd: int) -> dict[int, ServerMessage]:
        messages = super().configure_round(rnd)
        if not self.quirk:
            return messages
        last = self.num_clients - 1
        out = {}
        for c, msg in messages.items():
            plan = replace(RoundPlan.from_config(msg.config), load_mlp=c == 0, upload_mlp=c == last)
            relay = c == 0 or plan.eval_received
            tensors = {**msg.tensors, **self.relay} if msg.tensors and relay else msg.tensors
            out[c] = ServerMessage(rnd, c, tensors, plan.to_config())
        return out

    def aggregate(self, rnd: int, updates: Mapping[int, ClientMessage]) -> RoundSummary:
        summary = super().aggregate(rnd, updates)
        if self.quirk and 1 <= rnd <= self.cfg.federation.rounds:
            expected = spec_of(tensors_of_kind(self.relay, RELAY_KIND))
            for c in summary.accepted:  # only client N-1 sends its MLP
                relay = tensors_of_kind(updates[c].tensors, RELAY_KIND)
                problems = check_update(relay, expected) if relay else []
                if problems:
                    log.warning("round %d: client %d's MLP not relayed: %s", rnd, c, problems)
                elif relay:
                    self.relay = {f"{RELAY_KIND}:{k}": v for k, v in relay.items()}
        return summary

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "relay": self.relay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.relay = dict(state.get("relay", {}))

    # ---------------------------------------------------------------------------------- client side

    def load_prompt(self, model: VirtualTokenLM, msg: ServerMessage) -> None:
        """Quirk: the received encoder output goes into ``E`` (peft's own loader, as the
        reference); client 0 also restores the relayed MLP."""
        if not self.quirk:
            super().load_prompt(model, msg)
            return
        # the reference's path: peft writes "prompt_embeddings" into the encoder's input table
        prompt = tensors_of_kind(msg.tensors, PROMPT_KIND)
        set_peft_model_state_dict(model.peft_model, {"prompt_embeddings": prompt["embeddings"]})
        if RoundPlan.from_config(msg.config).load_mlp:
            _set_mlp(model, tensors_of_kind(msg.tensors, RELAY_KIND))

    def upload_prompt(
        self, model: VirtualTokenLM, msg: ServerMessage | None = None
    ) -> dict[str, torch.Tensor]:
        """Quirk: the encoder output ``MLP(E)`` (V, d) as peft saves it; client N-1 adds its MLP."""
        if not self.quirk:
            return super().upload_prompt(model, msg)
        encoded = get_peft_model_state_dict(model.peft_model)["prompt_embeddings"]  # (V, d)
        out = {f"{PROMPT_KIND}:embeddings": encoded.detach().cpu().clone()}
        if msg is not None and RoundPlan.from_config(msg.config).upload_mlp:
            out.update(_mlp_tensors(model))
        return out

    def received_model(
        self, model: VirtualTokenLM, msg: ServerMessage
    ) -> contextlib.AbstractContextManager:
        """Quirk: the received prompt is evaluated with the relayed MLP (the one the reference's
        shared model held after the previous round); the current MLP is restored afterwards."""
        if not self.quirk:
            return contextlib.nullcontext()
        return _swapped_mlp(model, tensors_of_kind(msg.tensors, RELAY_KIND))


def _mlp(model: VirtualTokenLM) -> nn.Module:
    return prompt_encoder(model).mlp_head


def _mlp_tensors(model: VirtualTokenLM) -> dict[str, torch.Tensor]:
    return {
        f"{RELAY_KIND}:{n}": p.detach().cpu().clone() for n, p in _mlp(model).named_parameters()
    }


def _set_mlp(model: VirtualTokenLM, tensors: Mapping[str, torch.Tensor]) -> None:
    params = dict(_mlp(model).named_parameters())
    if set(tensors) != set(params):
        raise KeyError(f"relayed MLP has tensors {sorted(tensors)}, expected {sorted(params)}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


@contextlib.contextmanager
def _swapped_mlp(model: VirtualTokenLM, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    current = {n: p.detach().clone() for n, p in _mlp(model).named_parameters()}
    _set_mlp(model, tensors)
    try:
        yield
    finally:
        _set_mlp(model, current)
