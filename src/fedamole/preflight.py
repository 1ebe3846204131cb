"""What can be checked about a valid config before a run starts, without loading the model's
weights (docs/config.md#before-a-run-starts).

:func:`fedamole.config.load` checks the fields and their combinations; it imports no torch and so
cannot see the machine or the model. :func:`preflight` looks at both, cheaply, so that
``fedamole validate`` reports what would otherwise fail only after the model has loaded (and, for
a run, after its run directory was created, blocking the corrected rerun):

- ``data.path`` exists here (:func:`fedamole.data.paths.locate`);
- ``model.device`` exists in this torch build and on this machine;
- ``model.name`` names a model: a known ``tiny:`` or ``embedded:`` name, a folder holding a
  ``config.json``, or a hub id whose config is in the local hub cache or, when the hub can be
  reached, on the hub. An offline machine fails fast here instead of retrying for a minute;
- every entry of the algorithm's target modules (``mole.target_modules`` for FedAMoLE,
  ``baselines.target_modules`` for the LoRA baselines) matches a module of that model, with the
  rule the injection uses. The model is built on torch's ``meta`` device from its config alone: no
  weights are read or allocated.

:func:`run_size_warning` turns the same model's parameter count into a rough training time on the
CPU, so that a paper-scale run on a laptop says so before it starts.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedamole.config import Config

__all__ = [
    "CPU_SECONDS_PER_PARAMETER_EXAMPLE",
    "LONG_RUN_SECONDS",
    "Preflight",
    "device_errors",
    "preflight",
    "run_size_warning",
    "secagg_errors",
    "unmatched_targets",
]

CPU_SECONDS_PER_PARAMETER_EXAMPLE = 1.3e-9
"""Rough CPU training cost: seconds per optimizer step per backbone parameter per example of
the batch. The demo's step (SmolLM2-135M, ``train.batch_size = 4``, synthetic prompts of at most
256 tokens) takes about 0.7 s on this project's CPU (docs/results/performance.md):
0.7 / (135e6 * 4) = 1.3e-9. Longer sequences cost more; evaluation is not counted."""

LONG_RUN_SECONDS = 3600.0
"""A CPU run whose estimated training time exceeds this gets :func:`run_size_warning`."""

_INSTALL_DOC = "docs/install.md#pytorch-torch_spec"
# `clean` first: `make install` does nothing while .venv is up to date with pyproject.toml
_CUDA_SPEC = (
    'make clean install TORCH_SPEC="torch==2.6.0 --index-url '
    'https://download.pytorch.org/whl/cu124"'
)


@dataclass(frozen=True)
class Preflight:
    """What :func:`preflight` found.

    Attributes:
        errors: one message per problem, each naming the field, the value and the fix.
        absent: what this machine lacks, each naming the field and the fix: a ``data.path`` that
            does not exist here, a hub model neither cached nor reachable. A run stops on them;
            ``fedamole validate`` only notes them (the config may be meant for another machine).
        parameters: the backbone's parameter count, when its config could be read.
    """

    errors: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    parameters: int | None = None

    def problems(self) -> list[str]:
        """Everything that would stop a run here: :attr:`errors` and :attr:`absent`."""
        return [*self.errors, *self.absent]


def preflight(cfg: Config) -> Preflight:
    """Check ``cfg`` against this machine and its model (see the module docstring); reads
    ``config.json`` files at most, never weights."""
    from fedamole.model_config import ModelUnavailableError

    absent, errors = _data_errors(cfg), device_errors(cfg.model.device) + secagg_errors(cfg)
    try:
        names, parameters = _modules(cfg.model.name)
    except ModelUnavailableError as exc:
        return Preflight(tuple(errors), (*absent, str(exc)))
    except ValueError as exc:
        return Preflight((*errors, str(exc)), tuple(absent))
    except Exception as exc:  # an exotic config that transformers cannot build without weights
        logging.getLogger(__name__).warning(
            "could not build %r on the meta device to check its target modules (%s: %s); they "
            "are checked when the model loads",
            cfg.model.name,
            type(exc).__name__,
            exc,
        )
        return Preflight(tuple(errors), tuple(absent))
    errors += _target_errors(cfg, names)
    return Preflight(tuple(errors), tuple(absent), parameters)


def secagg_errors(cfg: Config) -> list[str]:
    """``flower.secagg`` against the algorithm's registration
    (:attr:`~fedamole.algorithms.registry.AlgorithmSpec.secure_kinds`): SecAgg+ sums over every
    client, so an algorithm must have a mean over all clients to protect; one that also averages
    over groups (FedAMoLE's domain experts) runs only when ``flower.secaggplus.experts_in_clear``
    says that those may travel in the clear (docs/algorithm.md#secure-aggregation)."""
    from fedamole.algorithms.registry import algorithm_spec, registry

    name = cfg.federation.algorithm
    if cfg.flower.secagg == "none" or name not in registry():
        return []
    spec = algorithm_spec(name)
    if not spec.secure_kinds:
        able = sorted(n for n, s in registry().items() if s.secure_kinds)
        return [
            f"`flower.secagg` = 'secaggplus' cannot protect {name}: it registers no tensor "
            "that its server only ever averages over every client (it keeps updates apart, "
            "forwards one client's tensors, or averages within groups of clients, and a secure "
            "sum over a small group hides nothing: each member can subtract its own update from "
            "the group's mean and read the rest); set "
            f'`flower.secagg = "none"`, or choose one of {able}'
        ]
    if spec.clear_groups and not cfg.flower.secaggplus.experts_in_clear:
        k = cfg.mole.clients_per_expert
        return [
            f"`flower.secagg` = 'secaggplus' with {name} protects only "
            f"{' and '.join(spec.secure_kinds)} (means over every client); {spec.clear_groups} "
            f"({k}) would travel in the clear: SecAgg+ runs one sum over all clients, and a "
            "group this small hides nothing anyway, since a holder can subtract its own update "
            "from its group's mean and read the rest; set `flower.secaggplus.experts_in_clear = "
            "true` "
            'to run so, or `flower.secagg = "none"`'
        ]
    return []


@functools.lru_cache(maxsize=16)
def _modules(name: str) -> tuple[dict[str, str], int]:
    """``({qualified module name: class name}, parameter count)`` of ``model.name``, from
    :func:`fedamole.model_config.meta_model`; kept per name, as a sweep asks for every run."""
    from torch import nn

    from fedamole.model_config import meta_model

    model = meta_model(name)
    names = {  # nn.Linear subclasses count as "Linear", as the injection's isinstance does
        n: "Linear" if isinstance(module, nn.Linear) else type(module).__name__
        for n, module in model.named_modules()
        if n
    }
    return names, sum(p.numel() for p in model.parameters())


def _data_errors(cfg: Config) -> list[str]:
    """``data.path`` exists (resolved as the data loader resolves it)."""
    from fedamole.data.paths import locate
    from fedamole.data.types import DataFileNotFoundError

    if cfg.data.path is None:
        return []
    try:
        locate(cfg.data, cfg.data.path)
    except DataFileNotFoundError as exc:
        return [str(exc)]
    return []


def device_errors(device: str) -> list[str]:
    """``model.device`` exists in this torch build and on this machine."""
    import torch

    kind, _, index = device.partition(":")
    if kind in ("auto", "cpu"):
        return []
    field = f"`model.device` = {device!r}"
    if kind == "cuda":
        if not torch.backends.cuda.is_built():
            return [
                f"{field}: this torch build ({torch.__version__}) has no CUDA. Use "
                f"model.device=cpu (or auto), or reinstall with a CUDA build of torch through "
                f"the Makefile's TORCH_SPEC variable, e.g. {_CUDA_SPEC} ({_INSTALL_DOC})"
            ]
        count = torch.cuda.device_count()
        if count == 0:
            return [
                f"{field}: torch sees no CUDA GPU on this machine (CUDA_VISIBLE_DEVICES, the "
                "driver); use model.device=cpu (or auto)"
            ]
        if index and int(index) >= count:
            return [
                f"{field}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}; "
                "pick one of them or use model.device=cuda"
            ]
        return []
    if kind == "mps":
        if not torch.backends.mps.is_built():
            return [
                f"{field}: this torch build ({torch.__version__}) has no MPS (Apple GPUs). Use "
                "model.device=cpu (or auto), or on a Mac reinstall torch through the Makefile's "
                "TORCH_SPEC variable, e.g. make clean install TORCH_SPEC=torch==2.13.0 "
                f"({_INSTALL_DOC})"
            ]
        if not torch.backends.mps.is_available():
            return [f"{field}: MPS is not available on this machine; use model.device=cpu"]
        return []
    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        return [
            f"{field}: this torch build ({torch.__version__}) sees no Intel XPU. Use "
            "model.device=cpu (or auto), or reinstall with an XPU build of torch through the "
            f"Makefile's TORCH_SPEC variable (make clean install TORCH_SPEC=...; {_INSTALL_DOC})"
        ]
    if index and int(index) >= xpu.device_count():
        return [f"{field}: this machine has {xpu.device_count()} XPU(s); pick one of them"]
    return []


def _target_errors(cfg: Config, modules: dict[str, str]) -> list[str]:
    """Every target pattern of the algorithm matches a module, and MoLE's match only linears."""
    from fedamole.algorithms.registry import algorithm_spec

    targets = algorithm_spec(cfg.federation.algorithm).targets
    if targets is None:
        return []
    rule = "mole" if targets == "mole.target_modules" else "peft"
    patterns = cfg.mole.target_modules if rule == "mole" else cfg.baselines.target_modules
    if not patterns:  # `mole.target_modules` = [] is the config's own error
        return [] if rule == "mole" else [f"`{targets}` is empty; name the layers to wrap"]
    errors = []
    missing = unmatched_targets(list(modules), patterns, rule=rule)
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, kind in modules.items() if kind == "Linear"})
        errors.append(
            f"`{targets}` entr{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(map(repr, missing))} match{'es' if len(missing) == 1 else ''} no module "
            f"of {cfg.model.name!r}; its linear layers are named {linear[:16]}; a pattern is a "
            "name's last component"
            + (" or a regular expression on the whole name" if rule == "mole" else "")
        )
    if rule == "mole":
        bad = sorted(
            name
            for name, kind in modules.items()
            if kind != "Linear" and any(_mole_match(p, name) for p in patterns)
        )
        if bad:
            errors.append(
                f"`mole.target_modules` ({list(patterns)}) matches {bad[:4]}, which "
                f"{'is' if len(bad) == 1 else 'are'} not nn.Linear; MoLE wraps linear layers "
                "only: narrow the patterns"
            )
    return errors


def unmatched_targets(names: Sequence[str], patterns: Sequence[str], *, rule: str) -> list[str]:
    """The ``patterns`` that match none of the qualified module ``names``.

    Args:
        names: qualified module names (``model.layers.0.self_attn.q_proj``).
        patterns: target patterns.
        rule: ``"mole"``: a pattern equal to a name's last component, or a regular expression
            matching the whole name (:func:`fedamole.mole.inject.find_targets`); ``"peft"``: a
            pattern equal to the name or to its end after a dot (peft's rule for a list).
    """
    if rule == "mole":
        return [p for p in patterns if not any(_mole_match(p, n) for n in names)]
    return [p for p in patterns if not any(n == p or n.endswith(f".{p}") for n in names)]


def _mole_match(pattern: str, name: str) -> bool:
    if name.rsplit(".", 1)[-1] == pattern:
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:  # reported by the config's own checks
        return False


def run_size_warning(cfg: Config, parameters: int | None) -> str | None:
    """A warning when training ``cfg`` on the CPU will take over :data:`LONG_RUN_SECONDS`, by
    :data:`CPU_SECONDS_PER_PARAMETER_EXAMPLE`; ``None`` otherwise (or on a GPU, or when the
    parameter count is unknown)."""
    if parameters is None or not _on_cpu(cfg.model.device):
        return None
    f, t = cfg.federation, cfg.train
    steps = f.num_clients * f.rounds * t.steps
    per_step = CPU_SECONDS_PER_PARAMETER_EXAMPLE * parameters * t.batch_size
    seconds = steps * per_step
    if seconds <= LONG_RUN_SECONDS:
        return None
    return (
        f"this run trains {f.num_clients} clients x {f.rounds} rounds x {t.steps} steps = "
        f"{steps:,} optimizer steps of a {parameters / 1e6:,.0f}M-parameter model (batch "
        f"{t.batch_size}) on the CPU: roughly {_duration(seconds)} at about {per_step:.2g} s per "
        "step, evaluation not counted (docs/config.md#run-size). To try it quickly, shrink it, "
        "e.g. federation.num_clients=3 federation.rounds=2 train.steps=10, or start from "
        "configs/demo.toml"
    )


def _on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.0f} h" if hours >= 10 else f"{hours:.1f} h"
