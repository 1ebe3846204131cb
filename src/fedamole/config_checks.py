"""Cross-field feasibility of a configuration, one small check per concern.

The types and ranges of :mod:`fedamole.config` cannot say that an assignment problem has a
solution or that two ratios leave room for training data. Each function here checks one concern
and returns its messages (empty when fine); :data:`SECTION_CHECKS` lists them in report order, and
:func:`fedamole.config.feasibility_errors` runs them all, so that :func:`fedamole.config.load`
reports every problem at once.

Each message names the field, its value and the fix. This module needs
:class:`~fedamole.config.Config` for annotations only, so :mod:`fedamole.config` imports it without
an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedamole.config import Config

__all__ = [
    "SECTION_CHECKS",
    "assignment_errors",
    "data_errors",
    "eval_timing_errors",
    "federation_errors",
    "train_errors",
]


def assignment_errors(cfg: Config) -> list[str]:
    """FedAMoLE only: can RSEA give every client between min and max experts, and route?"""
    m, f, errors = cfg.mole, cfg.federation, []
    if f.algorithm != "fedamole":
        return errors
    n, e, k = f.num_clients, m.num_experts, m.clients_per_expert
    lo, hi = m.min_experts_per_client, m.max_experts_per_client
    if k > n:
        errors.append(
            f"`mole.clients_per_expert` ({k}) must be <= `federation.num_clients` ({n}): "
            "an expert cannot serve more clients than exist"
        )
    if lo > hi:
        errors.append(
            f"`mole.min_experts_per_client` ({lo}) must be <= `mole.max_experts_per_client` ({hi})"
        )
    if lo * n > e * k:
        errors.append(
            f"infeasible assignment: min_experts_per_client*num_clients ({lo}*{n}={lo * n}) > "
            f"num_experts*clients_per_expert ({e}*{k}={e * k}); raise `mole.num_experts` to "
            f">= {-(-lo * n // k)} or `mole.clients_per_expert`"
        )
    if e * k > n * hi:
        errors.append(
            f"infeasible assignment: num_experts*clients_per_expert ({e}*{k}={e * k}) > "
            f"num_clients*max_experts_per_client ({n}*{hi}={n * hi}); lower "
            f"`mole.num_experts` to <= {n * hi // k} or raise `mole.max_experts_per_client`"
        )
    if m.top_k > lo:
        errors.append(
            f"`mole.top_k` ({m.top_k}) must be <= `mole.min_experts_per_client` ({lo}), "
            "or a client with the fewest experts cannot route"
        )
    if f.homogeneous and (e * k) // n < max(lo, m.top_k):
        errors.append(
            f"homogeneous assignment gives floor(E*k_c/N) = {(e * k) // n} experts per client, "
            f"fewer than `mole.top_k` ({m.top_k}); raise `mole.num_experts`"
        )
    return errors


def eval_timing_errors(cfg: Config) -> list[str]:
    """``eval.timing`` against the algorithm: FedAMoLE has no global model to evaluate."""
    if cfg.federation.algorithm != "fedamole" or cfg.eval.timing == "personalized":
        return []
    return [
        f"`eval.timing` ({cfg.eval.timing!r}) is not available for fedamole: it evaluates each "
        "client right after local training and aggregates nothing after the last "
        "round; use 'personalized'"
    ]


def data_errors(cfg: Config) -> list[str]:
    """The split ratios, the local dataset's path and the partition's Dirichlet alpha."""
    d, p, errors = cfg.data, cfg.partition, []
    if d.eval_ratio + d.test_ratio >= 1:
        errors.append(
            f"`data.eval_ratio` + `data.test_ratio` ({d.eval_ratio} + {d.test_ratio}) must be < 1"
        )
    if d.dataset == "local" and not d.path:
        errors.append("`data.path` is required when `data.dataset` = 'local'")
    if p.kind == "dirichlet" and p.alpha <= 0:
        errors.append(f"`partition.alpha` ({p.alpha}) must be > 0 for Dirichlet")
    return errors


def train_errors(cfg: Config) -> list[str]:
    """Gradient accumulation must split a batch evenly."""
    t, mb = cfg.train, cfg.train.micro_batch_size
    if mb is None or not t.batch_size % mb:
        return []
    return [
        f"`train.batch_size` ({t.batch_size}) must be a multiple of `train.micro_batch_size` ({mb})"
    ]


def federation_errors(cfg: Config) -> list[str]:
    """Every injected failure (``federation.fail_clients``) names an existing round and client."""
    f, errors = cfg.federation, []
    for rnd, client in f.fail_clients:
        if not (0 <= client < f.num_clients) or not (0 <= rnd <= f.rounds):
            errors.append(
                f"`federation.fail_clients` entry ({rnd}, {client}) is out of range: "
                f"rounds 0..{f.rounds}, clients 0..{f.num_clients - 1}"
            )
    return errors


# In report order; each takes a validated config and returns its messages.
def model_errors(cfg: Config) -> list[str]:
    """A ``model.name`` is not blank, and one written as a path names an existing folder."""
    name = cfg.model.name
    if not name.strip():
        return [
            f"`model.name` = {name!r} is blank; give a hub id, a model folder, "
            "'embedded:smollm2-135m-instruct' or 'tiny:llama'"
        ]
    if name.startswith(("/", "./", "../", "~")) and not _is_folder(name):
        return [
            f"`model.name` = {name!r:.120}: no such folder; give a folder holding the model's "
            "config.json and weights, a hub id, 'embedded:smollm2-135m-instruct' or 'tiny:llama'"
        ]
    return []


def _is_folder(name: str) -> bool:
    """Whether ``name`` (``~`` expanded) is a folder; a path that cannot be one (too long, a NUL
    byte, an unknown ``~user``) is not."""
    try:
        return Path(name).expanduser().is_dir()
    except (OSError, RuntimeError, ValueError):
        return False


SECTION_CHECKS: tuple[Callable[[Config], list[str]], ...] = (
    model_errors,
    assignment_errors,
    eval_timing_errors,
    data_errors,
    train_errors,
    federation_errors,
)
