"""Read run directories into comparable results: who ran what, and how well
(docs/algorithm.md#reported-metrics).

Everything is read from the run directory (docs/run-directory.md): the method and the scenario from
``config.toml``, scores from ``metrics.jsonl``, bytes from ``comm.jsonl``, experts from
``assignments/``, the wall time per round from the ``server/round_seconds`` records (runs written
before that metric existed have no time per round).

- **Method label** from ``federation.algorithm`` and the evaluation split: a global-model baseline
  (FedIT, FedPrompt, FedPTuning, FFA-LoRA) evaluated after local training (split ``test``) is
  ``X-FT``, after aggregation (``test_global``) plain ``X``; a run with ``eval.timing = "both"``
  gives both. FedAMoLE ablations append flags: ``-R`` static random assignment, ``-Rand`` random
  re-drawn each round, ``-H`` linear router, ``-S`` no shared expert, ``-Homo`` homogeneous
  architecture, ``-DP`` privacy noise, ``-GDP`` the Gaussian mechanism on the statistics. Any
  algorithm with client-level DP on its updates (``privacy.updates``) gets ``-UDP``.
- **Scenario label** from ``data.dataset`` and ``partition``: ``SNLI α=0.1``, ``NI task``.
- When runs with one label differ in other settings (a sensitivity sweep), the label gets the
  differing fields appended, e.g. ``FedAMoLE [lr=0.0001]``, so different configs never pool.
- **Per-seed value** (docs/algorithm.md#reported-metrics): per round, the unweighted mean over
  clients of ``score``; then the maximum over rounds (``best``; round 0, the untrained model, is
  included when ``eval.test_init`` evaluated it, as in the reference) or the last round. Only
  rounds with scores count: with ``eval.every > 1`` the tested ones.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedamole.algorithms.registry import registry
from fedamole.analysis.runs import Run, find_run_dirs, flat_config, load_runs, scan_runs
from fedamole.analysis.summaries import summarize_rounds

__all__ = [
    "SCORE_LABEL",
    "Entry",
    "Run",
    "entries",
    "find_run_dirs",
    "load_runs",
    "mean_std",
    "method_labels",
    "metric_name",
    "scan_runs",
    "scenario_label",
    "scenario_sort_key",
    "score_definition",
]

RoundMode = Literal["best", "last"]
log = logging.getLogger(__name__)


# Settings that change no result: two runs that differ only in them are copies of one run.
def _table_blocks() -> list[tuple[str, ...]]:
    """Each registered algorithm's table rows, algorithms by ``table_order`` (the paper's
    baselines, the extra ones, FedAMoLE last): its ablation rows before its plain label and, for a
    global-model algorithm, its "-FT" row after it."""
    return [
        (
            *(spec.label + suffix for suffix in spec.ablations),
            spec.label,
            *((f"{spec.label}-FT",) if spec.global_model else ()),
        )
        for spec in sorted(registry().values(), key=lambda s: s.table_order)
    ]


_BLOCKS = _table_blocks()
# Row order of the tables.
METHOD_ORDER = tuple(row for block in _BLOCKS for row in block)
# Labels no algorithm lists (other ablation flags, "X-global", unregistered algorithms) rank just
# before the last algorithm's rows (before "FedAMoLE-R").
_UNLISTED_RANK = len(METHOD_ORDER) - len(_BLOCKS[-1]) - 0.5
_DATASETS = {
    "snli": "SNLI",
    "dolly": "Dolly",
    "natural_instructions": "NI",
    "synthetic": "Synthetic",
    "local": "Local",
}
# What a client's test score is on each dataset (fedamole.evaluation.evaluate_examples): the mean
# over its scored examples of 1/0 (answer-choice: is the lowest-NLL choice the answer?) or of the
# ROUGE-L F of the greedy generation (free text); so accuracy on SNLI, ROUGE-L F on Dolly and NI.
_ACCURACY, _ROUGE, _MIXED = "accuracy", "ROUGE-L F", "per-example accuracy or ROUGE-L F"
_METRICS = {"snli": _ACCURACY, "dolly": _ROUGE, "natural_instructions": _ROUGE}
# The one axis label of the client-mean test score in every figure (see score_definition).
SCORE_LABEL = "test score (×100)"
# Never part of a method's identity: the seed and bookkeeping, the scenario, the split choice.
_NOT_METHOD = ("run", "data", "partition", "eval.timing", "model.device", "flower")
# The tables of the algorithms' own settings (AlgorithmSpec.settings): a run's identity is its own.
_SETTINGS = ("mole", "baselines")


@dataclass
class Entry:
    """One result of one run: a (method, scenario, seed) point with its evaluation split."""

    run: Run
    method: str
    scenario: str
    split: str
    seed: int
    base_method: str = ""
    variant: dict[str, Any] = field(default_factory=dict)

    def value(self, mode: RoundMode) -> tuple[int, float] | None:
        """``(round, client-mean score)`` of the best or last round; ``None`` without scores."""
        by_round = self.run.mean_by_round(self.split)
        return summarize_rounds(by_round, mode) if by_round else None

    def client_values(self, mode: RoundMode) -> dict[int, float]:
        """client -> score at the round :meth:`value` picks."""
        picked = self.value(mode)
        return self.run.scores(self.split).get(picked[0], {}) if picked else {}


def method_labels(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(label, split)`` pairs a run of ``config`` reports (see the module docstring)."""
    fed = config.get("federation", {})
    algo = fed.get("algorithm", "fedamole")
    spec = registry().get(algo)  # None: an algorithm no longer registered, labelled by its name
    label = algo if spec is None else spec.label
    if spec is not None and spec.label_flags is not None:
        label += spec.label_flags(config)
    if config.get("privacy", {}).get("updates", "none") != "none":
        label += "-UDP"  # client-level DP on the model updates (docs/privacy.md)
    timing = config.get("eval", {}).get("timing", "personalized")
    global_model = spec is not None and spec.global_model
    out = []
    if timing in ("personalized", "both"):
        out.append((f"{label}-FT" if global_model else label, "test"))
    if timing in ("global", "both"):
        out.append((label if global_model else f"{label}-global", "test_global"))
    return out


def scenario_label(config: Mapping[str, Any]) -> str:
    """``SNLI α=0.1``, ``NI task``, ``Synthetic 2 tasks/client``, ``Dolly iid``."""
    data, part = config.get("data", {}), config.get("partition", {})
    name = _DATASETS.get(data.get("dataset", "synthetic"), str(data.get("dataset")))
    kind = part.get("kind", "dirichlet")
    if kind == "dirichlet":
        return f"{name} α={float(part.get('alpha', 1.0)):g}"
    if kind == "task":
        k = int(part.get("tasks_per_client", 1))
        return f"{name} task" if k == 1 else f"{name} {k} tasks/client"
    return f"{name} {kind}"


def scenario_sort_key(entry: Entry) -> tuple:
    """Paper order: SNLI, Dolly, NI, then others; Dirichlet by α, then task, then iid."""
    data, part = entry.run.config.get("data", {}), entry.run.config.get("partition", {})
    order = list(_DATASETS)
    dataset = data.get("dataset", "synthetic")
    kinds = ["dirichlet", "task", "iid"]
    kind = part.get("kind", "dirichlet")
    return (
        order.index(dataset) if dataset in order else len(order),
        kinds.index(kind) if kind in kinds else len(kinds),
        float(part.get("alpha", 1.0)) if kind == "dirichlet" else 0.0,
        int(part.get("tasks_per_client", 1)),
        entry.scenario,
    )


def method_sort_key(method: str) -> tuple:
    """Table row order (:data:`METHOD_ORDER`, unknown labels before FedAMoLE's, by name)."""
    base = method.split(" [")[0]
    if base in METHOD_ORDER:
        return (METHOD_ORDER.index(base), method)
    return (_UNLISTED_RANK, method)


def metric_name(entries_of_scenario: Iterable[Entry]) -> str:
    """What the client-mean test score measures in these entries' scenarios: ``accuracy`` (SNLI,
    answer-choice tasks only), ``ROUGE-L F`` (Dolly, NI: free text only), or
    ``per-example accuracy or ROUGE-L F`` (the synthetic suite mixes both kinds; any other or mixed
    datasets). Every figure labels the score's axis :data:`SCORE_LABEL`; this names what it is."""
    datasets = {e.run.get("data.dataset") for e in entries_of_scenario}
    names = {_METRICS.get(d, _MIXED) for d in datasets}
    return names.pop() if len(names) == 1 else _MIXED


def score_definition(units: Mapping[str, str] | None = None) -> str:
    """One sentence that defines the score (for figure captions), then, given ``units``
    (scenario -> :func:`metric_name`), what it is in each scenario."""
    text = (
        "Score: the client-mean test score × 100 (unweighted mean over clients); a client's score "
        "is the mean over its scored test examples of 1/0 on answer-choice tasks (the choice with "
        "the lowest NLL is right or not) and of the ROUGE-L F of the greedy answer on free-text "
        "tasks, i.e. its accuracy on answer-choice tasks and its ROUGE-L F on free-text tasks."
    )
    if units:
        by_unit: dict[str, list[str]] = {}
        for scenario, unit in units.items():
            by_unit.setdefault(unit, []).append(scenario)
        text += " Here: " + "; ".join(f"{u} for {', '.join(s)}" for u, s in by_unit.items()) + "."
    return text


def entries(runs: Iterable[Run], *, ignore: Collection[str] = ()) -> list[Entry]:
    """Every ``(run, split)`` result with its method and scenario label.

    Args:
        runs: loaded runs.
        ignore: dotted keys or sections not to tell methods apart by (a figure's x variable,
            e.g. ``federation.num_clients``), besides the seed, the scenario and bookkeeping.
    """
    out = []
    for run in runs:
        variant = _method_identity(run.config, ignore)
        for label, split in method_labels(run.config):
            if run.scores(split):
                seed = int(run.get("run.seed", 0))
                out.append(
                    Entry(run, label, scenario_label(run.config), split, seed, label, variant)
                )
    _disambiguate(out)
    return out


def mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """``(mean, sample std with ddof=1 or None for one value, n)``."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, n
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5, n


def _method_identity(config: Mapping[str, Any], ignore: Collection[str]) -> dict[str, Any]:
    flat = flat_config(config)
    spec = registry().get(config.get("federation", {}).get("algorithm", "fedamole"))
    own = "baselines" if spec is None else spec.settings
    # the other algorithms' settings say nothing about this run's method
    skip = (*_NOT_METHOD, *ignore, *(t for t in _SETTINGS if t != own))
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(s + ".") for s in skip)}


def _disambiguate(items: list[Entry]) -> None:
    """Append ``[field=value, ...]`` to labels shared by runs of different settings. A field a
    run's config lacks (written before the field existed) has its default value."""
    from fedamole.config import Config

    defaults = flat_config(Config().to_dict())
    by_label: dict[str, list[Entry]] = {}
    for e in items:
        by_label.setdefault(e.method, []).append(e)
    for label, group in by_label.items():
        keys = sorted({k for e in group for k in e.variant})

        def value(e: Entry, key: str) -> Any:
            return e.variant.get(key, defaults.get(key))

        differing = [k for k in keys if len({repr(value(e, k)) for e in group}) > 1]
        if not differing:
            continue
        for e in group:
            parts = [f"{k.rsplit('.', 1)[-1]}={value(e, k)}" for k in differing]
            e.method = f"{label} [{', '.join(parts)}]"
