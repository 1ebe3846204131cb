"""Collect the load-balance loss of every MoLE layer during a forward pass
(docs/algorithm.md#load-balance-loss).

The loss is ``coef * sum over modules of n * <P_mean, f>`` (summed, not averaged, over modules; the
reference's ``coef`` is 0.001). Layers do not store it: :func:`balance_loss` installs routing hooks
for the duration of a ``with`` block and removes them in ``finally``::

    with balance_loss(model, coef=cfg.mole.balance_coef, token_mask=batch["attention_mask"]) as bal:
        out = model(**batch)
    loss = out.loss + bal.total()

The reference averages over every token including padding (it trains with batch size 1, so there is
none); pass ``token_mask`` to leave padding out of padded batches. Each forward inside the block
adds its terms (a layer called twice, e.g. under activation checkpointing, counts twice).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fedamole.mole.layer import MoLELinear, mole_modules
from fedamole.mole.router import Routing, load_balance_loss

__all__ = ["BalanceLossCollector", "balance_loss"]


class BalanceLossCollector:
    """Accumulates per-module balance terms from routing hooks (see :func:`balance_loss`)."""

    def __init__(self, coef: float, token_mask: Tensor | None = None) -> None:
        """Args: ``coef`` multiplies the sum; ``token_mask`` is nonzero on real tokens."""
        self.coef = coef
        self.token_mask = token_mask
        self._terms: dict[str, list[Tensor]] = {}

    def record(self, name: str, routing: Routing) -> None:
        """Add the balance term of one layer call."""
        term = load_balance_loss(routing.probs, routing.indices, self.token_mask)
        self._terms.setdefault(name, []).append(term)

    def per_module(self) -> dict[str, Tensor]:
        """Unscaled ``n * <P_mean, f>`` per module (summed over calls), sorted by name."""
        return {name: torch.stack(terms).sum() for name, terms in sorted(self._terms.items())}

    def total(self) -> Tensor:
        """``coef`` times the sum over modules: the term to add to the training loss.

        Raises:
            RuntimeError: no MoLE layer ran inside the ``with`` block.
        """
        if not self._terms:
            raise RuntimeError(
                "no routing was recorded: run the model's forward inside the "
                "`with balance_loss(...)` block"
            )
        return self.coef * torch.stack(list(self.per_module().values())).sum()


@contextmanager
def balance_loss(
    model: nn.Module, *, coef: float, token_mask: Tensor | None = None
) -> Iterator[BalanceLossCollector]:
    """Record the balance loss of every MoLE layer of ``model`` while the block runs.

    Args:
        model: a model with MoLE layers.
        coef: the loss coefficient (``MoLEConfig.balance_coef``).
        token_mask: optional ``(batch, seq)`` attention mask of the batch; padding is excluded.

    Yields:
        The :class:`BalanceLossCollector`; read ``total()`` inside or after the block.

    Raises:
        ValueError: the model has no MoLE layers.
    """
    modules = mole_modules(model)
    if not modules:
        raise ValueError("the model has no MoLE layers: call inject_mole first")
    collector = BalanceLossCollector(coef, token_mask)
    handles = [m.register_routing_hook(_hook(collector, name)) for name, m in modules.items()]
    try:
        yield collector
    finally:
        for handle in handles:
            handle.remove()


def _hook(collector: BalanceLossCollector, name: str):
    def hook(module: MoLELinear, routing: Routing) -> None:
        collector.record(name, routing)

    return hook
