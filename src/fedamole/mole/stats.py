"""Client-side RSEA statistics: mean token and expert embeddings per MoLE module
(docs/algorithm.md#client-statistics).

Over a client's embedding set, in eval mode (no dropout) and without gradients, each module keeps
the running token-weighted mean of its input ``x_bar`` (padding excluded through the attention mask;
the reference uses batch size 1, so it has none). Because the embeddings are linear in ``x``::

    mean token embedding    q_bar   = W_tok x_bar      (r,)
    mean expert embeddings  h_bar_e = A_e x_bar        (n, r), one row per held expert

The inputs are read by forward pre-hooks on our own :class:`MoLELinear` modules, installed and
removed by a context manager. The reference's zero placeholder row for the shared expert is neither
computed here nor uploaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedamole.mole.layer import MoLELinear, mole_modules

__all__ = ["ExampleStats", "ModuleStats", "embedding_stats", "example_embedding_stats"]


@dataclass(frozen=True)
class ModuleStats:
    """RSEA statistics of one module (float32, CPU).

    Attributes:
        token: ``(r,)`` mean token embedding ``W_tok x_bar``.
        experts: ``(n, r)`` mean expert embeddings ``A_e x_bar``, rows ordered like ``expert_ids``.
        expert_ids: ``(n,)`` global ids of the held experts.
        num_tokens: how many (non-padding) tokens the means cover.
    """

    token: Tensor
    experts: Tensor
    expert_ids: Tensor
    num_tokens: int


@dataclass(frozen=True)
class ExampleStats:
    """RSEA statistics of one module, one row per example (float64, CPU): each example's own
    token-weighted mean input ``x_i`` projected, for the Gaussian mechanism, which bounds one
    example's contribution (docs/privacy.md#the-gaussian-mechanism-on-the-statistics).

    Attributes:
        token: ``(m, r)`` per-example token embeddings ``W_tok x_i``.
        experts: ``(m, n, r)`` per-example expert embeddings ``A_e x_i``.
        expert_ids: ``(n,)`` global ids of the held experts.
    """

    token: Tensor
    experts: Tensor
    expert_ids: Tensor


def example_embedding_stats(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    token_weights: Mapping[str, Tensor] | None = None,
) -> dict[str, ExampleStats]:
    """Like :func:`embedding_stats`, but one row per example instead of the mean.

    Args:
        model: a model with MoLE layers; its train/eval mode is restored afterwards.
        batches: mappings with ``input_ids`` ``(B, S)`` and ``attention_mask`` ``(B, S)``.
        token_weights: as for :func:`embedding_stats`.

    Returns:
        ``{module name: ExampleStats}``, sorted by name, rows in the order of the examples.

    Raises:
        ValueError: no MoLE layers, a batch without ``attention_mask``, or an example without a
            (non-padding) token.
    """
    modules, _, rows = _record_forward(model, batches, per_example=True)
    weights = token_weights or {}
    out = {}
    for name, module in modules.items():
        x = torch.cat(rows[name]).to(module.token_proj.weight.device)  # (m, d_in) float64
        w_tok = module.token_proj.weight if weights.get(name) is None else weights[name]
        token = x @ w_tok.detach().to(x.device).double().T  # (m, d_in) @ (d_in, r) -> (m, r)
        # (m, d_in) x (n, r, d_in) -> (m, n, r)
        experts = torch.einsum("md,nrd->mnr", x, module.lora_A.detach().double())
        ids = module.expert_ids.detach().cpu().clone()
        out[name] = ExampleStats(token=token.cpu(), experts=experts.cpu(), expert_ids=ids)
    return out


def embedding_stats(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    token_weights: Mapping[str, Tensor] | None = None,
) -> dict[str, ModuleStats]:
    """One no-grad eval forward per batch; mean embeddings per MoLE module.

    Args:
        model: a model with MoLE layers; its train/eval mode is restored afterwards.
        batches: mappings with ``input_ids`` ``(B, S)`` and optionally ``attention_mask``
            ``(B, S)`` (other keys, e.g. ``labels``, are ignored).
        token_weights: module name -> ``(r, d_in)`` token projection for the mean token
            embedding instead of the module's own (``mole.rsea_token_proj = "received"``).

    Returns:
        ``{module name: ModuleStats}``, sorted by name.

    Raises:
        ValueError: no MoLE layers, or no (non-padding) token was seen.
    """
    modules, recorder, _ = _record_forward(model, batches, per_example=False)
    weights = token_weights or {}
    return {
        name: _stats(module, *recorder.result(name), weights.get(name))
        for name, module in modules.items()
    }


def _record_forward(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], *, per_example: bool
) -> tuple[dict[str, MoLELinear], _InputRecorder, dict[str, list[Tensor]]]:
    """One no-grad eval forward per batch with every MoLE module's input recorded: the modules,
    the recorder (token-weighted sums) and, with ``per_example``, each module's per-example mean
    inputs batch by batch. The model's train/eval mode is restored afterwards.

    Raises:
        ValueError: no MoLE layers, or (``per_example``) a batch without ``attention_mask``.
    """
    modules = mole_modules(model)
    if not modules:
        raise ValueError("the model has no MoLE layers: call inject_mole first")
    device = next(iter(modules.values())).token_proj.weight.device
    was_training = model.training
    model.eval()
    rows: dict[str, list[Tensor]] = {name: [] for name in modules}
    try:
        with torch.no_grad(), _record_inputs(modules) as recorder:
            for batch in batches:
                if per_example and "attention_mask" not in batch:
                    raise ValueError("per-example statistics need batches with attention_mask")
                mask = batch.get("attention_mask")
                recorder.mask = None if mask is None else mask.to(device)
                if per_example:
                    recorder.per_example = {}
                # Only the layer inputs matter: logits for one column skip most of the lm head.
                model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=recorder.mask,
                    logits_to_keep=1,
                )
                for name, means in (recorder.per_example or {}).items():
                    rows[name].append(means)
    finally:
        model.train(was_training)
    return modules, recorder, rows


class _InputRecorder:
    """Running token-weighted sums of each module's input (float64)."""

    def __init__(self) -> None:
        self.mask: Tensor | None = None
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, float] = {}
        # when a dict: each module's per-example mean inputs of the current batch, (B, d_in)
        self.per_example: dict[str, Tensor] | None = None

    def add(self, name: str, x: Tensor) -> None:
        if self.per_example is not None:
            self._add_examples(name, x)
            return
        x_flat = x.reshape(-1, x.shape[-1]).float()  # (T, d_in)
        if self.mask is None:
            weight = x_flat.new_ones(x_flat.shape[0])  # (T,)
        elif self.mask.numel() != x_flat.shape[0]:
            raise ValueError(
                f"attention_mask has {self.mask.numel()} entries but module {name!r} received "
                f"{x_flat.shape[0]} tokens"
            )
        else:
            weight = self.mask.reshape(-1).float()  # (T,)
        total = (weight @ x_flat).double()  # (T,) @ (T, d_in) -> (d_in,)
        self.sums[name] = self.sums.get(name, 0) + total
        self.counts[name] = self.counts.get(name, 0.0) + float(weight.sum())

    def _add_examples(self, name: str, x: Tensor) -> None:
        assert self.mask is not None  # set with per_example by example_embedding_stats
        mask = self.mask.double()  # (B, S)
        x3 = x.reshape(mask.shape[0], -1, x.shape[-1]).double()  # (B, S, d_in)
        if x3.shape[1] != mask.shape[1]:
            raise ValueError(
                f"attention_mask has {mask.shape[1]} positions but module {name!r} received "
                f"{x3.shape[1]} per example"
            )
        counts = mask.sum(dim=1)  # (B,)
        if bool((counts <= 0).any()):
            raise ValueError(f"module {name!r}: an example without a non-padding token")
        sums = torch.einsum("bs,bsd->bd", mask, x3)  # (B, S) x (B, S, d_in) -> (B, d_in)
        self.per_example[name] = sums / counts[:, None]  # type: ignore[index]

    def result(self, name: str) -> tuple[Tensor, float]:
        count = self.counts.get(name, 0.0)
        if count <= 0:
            raise ValueError(
                f"module {name!r} saw no token: pass at least one batch with a non-padding token"
            )
        return self.sums[name] / count, count  # (d_in,) mean input


@contextmanager
def _record_inputs(modules: Mapping[str, MoLELinear]) -> Iterator[_InputRecorder]:
    recorder = _InputRecorder()
    handles = []
    try:
        for name, module in modules.items():
            hook = _pre_hook(recorder, name)
            handles.append(module.register_forward_pre_hook(hook))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def _pre_hook(recorder: _InputRecorder, name: str):
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        recorder.add(name, args[0])

    return hook


def _stats(
    module: MoLELinear, mean_input: Tensor, count: float, token_weight: Tensor | None
) -> ModuleStats:
    x_bar = mean_input.to(module.token_proj.weight.device)  # (d_in,) float64
    w_tok = module.token_proj.weight if token_weight is None else token_weight
    token = w_tok.detach().to(x_bar.device).double() @ x_bar  # (r, d_in) @ (d_in,) -> (r,)
    experts = module.lora_A.detach().double() @ x_bar  # (n, r, d_in) @ (d_in,) -> (n, r)
    return ModuleStats(
        token=token.float().cpu(),
        experts=experts.float().cpu(),
        expert_ids=module.expert_ids.detach().cpu().clone(),
        num_tokens=round(count),
    )
