"""The heterogeneous mixture of LoRA experts (HMoLE) layer and its helpers
(docs/algorithm.md#hmole-layer).

- :mod:`.layer`: :class:`MoLELinear`, the wrapper of a frozen linear, and :func:`mole_forward`, its
  math.
- :mod:`.router`: gate logits, top-k routing and the load-balance term (pure functions).
- :mod:`.balance`: the load-balance loss collector (a context manager).
- :mod:`.state`: per-module adapter state (:class:`ModuleState`), initialization, get/set.
- :mod:`.inject`: wrapping a model's target linears, trainable parameters.
- :mod:`.stats`: the client-side RSEA statistics (mean token and expert embeddings).
"""

from fedamole.mole.balance import BalanceLossCollector, balance_loss
from fedamole.mole.inject import find_targets, inject_mole, mole_parameters
from fedamole.mole.layer import ROUTERS, MoLELinear, mole_forward, mole_modules
from fedamole.mole.router import (
    Routing,
    expert_embedding_logits,
    load_balance_loss,
    route,
)
from fedamole.mole.state import ModuleState, get_mole_state, init_module_state, set_mole_state
from fedamole.mole.stats import ExampleStats, ModuleStats, embedding_stats, example_embedding_stats

__all__ = [
    "ROUTERS",
    "BalanceLossCollector",
    "ExampleStats",
    "MoLELinear",
    "ModuleState",
    "ModuleStats",
    "Routing",
    "balance_loss",
    "embedding_stats",
    "example_embedding_stats",
    "expert_embedding_logits",
    "find_targets",
    "get_mole_state",
    "init_module_state",
    "inject_mole",
    "load_balance_loss",
    "mole_forward",
    "mole_modules",
    "mole_parameters",
    "route",
    "set_mole_state",
]
