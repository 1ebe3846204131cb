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
  architecture, ``-DP`` privacy noise.
- **Scenario label** from ``data.dataset`` and ``partition``: ``SNLI α=0.1``, ``NI task``.
- When runs with one label differ in other settings (a sensitivity sweep), the label gets the
  differing fields appended, e.g. ``FedAMoLE [lr=0.0001]``, so different configs never pool.
- **Per-seed value** (docs/algorithm.md#reported-metrics): per round, the unweighted mean over
  clients of ``score``; then the maximum over rounds (``best``; round 0, the untrained model, is
  included when ``eval.test_init`` evaluated it, as in the reference) or the last round. Only
  rounds with scores count: with ``eval.every > 1`` the tested ones.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from fedamole.algorithms.registry import registry
from fedamole.analysis.summaries import summarize_rounds
from fedamole.rundir import CONFIG, SERVER_CLIENT, Fold, RunDir, fold, is_backup, read_jsonl

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
_NOT_RESULT = (
    "run.name",
    "run.out_dir",
    "run.tensorboard",
    "run.hooks",
    "run.log_level",
    "run.threads",
    "run.checkpoint",
    "model.device",
    "flower",
)


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
class Run:
    """One run directory, read lazily."""

    path: Path
    config: dict[str, Any]
    finished: bool

    @property
    def name(self) -> str:
        return self.path.name

    def get(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``federation.num_clients``)."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @cached_property
    def comm(self) -> list[dict[str, Any]]:
        """Every ``comm.jsonl`` record (``[]`` without the file)."""
        return list(read_jsonl(RunDir(self.path).comm))

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """Every ``metrics.jsonl`` record but the per-step training ones (:attr:`step_metrics`),
        which no table or figure reads and which are most of a long run's file."""
        return list(read_jsonl(RunDir(self.path).metrics, steps=False))

    @property
    def step_metrics(self) -> list[dict[str, Any]]:
        """The per-step training records (``step_loss``, ``step_tokens``, ``step_lr``, ...)."""
        return list(read_jsonl(RunDir(self.path).metrics, steps=True))

    def server_metric(self, metric: str) -> dict[int, float]:
        """round -> value of a server metric about the whole round (client
        :data:`~fedamole.rundir.SERVER_CLIENT`, e.g. ``rsea/group_purity``)."""
        by_round = fold(self.metrics, "server", metric)
        return {rnd: v[SERVER_CLIENT] for rnd, v in by_round.items() if SERVER_CLIENT in v}

    def scores(self, split: str, metric: str = "score") -> Fold:
        """round -> client -> value of ``split/metric`` (:func:`~fedamole.rundir.fold`)."""
        return fold(self.metrics, split, metric)

    def mean_by_round(self, split: str, metric: str = "score") -> dict[int, float]:
        """round -> unweighted mean over the clients that reported."""
        return {r: sum(v.values()) / len(v) for r, v in self.scores(split, metric).items() if v}

    def comm_per_client_round(self) -> tuple[float, float] | None:
        """Mean (up, down) bytes per client per training round (rounds 1..R)."""
        rounds, clients = int(self.get("federation.rounds", 0)), self.get("federation.num_clients")
        if not rounds or not clients or not RunDir(self.path).comm.exists():
            return None
        up = down = 0
        for rec in self.comm:
            if 1 <= rec["round"] <= rounds:
                if rec["direction"] == "up":
                    up += rec["bytes"]
                else:
                    down += rec["bytes"]
        return up / (rounds * clients), down / (rounds * clients)

    def seconds_per_round(self) -> float | None:
        """Mean wall time of the training rounds 1..R (the last attempt of each round)."""
        rounds = int(self.get("federation.rounds", 0))
        seconds = self.mean_by_round("server", "round_seconds")
        values = [v for r, v in seconds.items() if 1 <= r <= rounds]
        return sum(values) / len(values) if values else None

    def experts_by_round(self) -> dict[int, dict[int, list[int]]]:
        """round -> client -> experts held in each module (FedAMoLE runs; ``{}`` otherwise)."""
        out: dict[int, dict[int, list[int]]] = {}
        for rnd, record in RunDir(self.path).read_assignments().items():
            for per_client in record.get("modules", {}).values():
                for client, ids in enumerate(per_client):
                    out.setdefault(rnd, {}).setdefault(client, []).append(len(ids))
        return out


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


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (those holding ``config.toml``) given directly or found below ``paths``;
    folders moved aside by ``--overwrite`` (``NAME.old-<time>``) are left out.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if not path.is_dir():
            raise NotADirectoryError(
                f"{path} is a file, not a run directory or a folder of runs; give the folder "
                f"that holds a run's {CONFIG} (here {path.parent}), or a folder above it"
            )
        if RunDir(path).config.is_file():
            found.append(path)
            continue
        for cfg in sorted(path.rglob(CONFIG)):
            if not is_backup(cfg.relative_to(path)):
                found.append(cfg.parent)
    return list(dict.fromkeys(found))


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """:class:`Run` objects for every readable run directory under ``paths`` (see
    :func:`find_run_dirs` and :func:`scan_runs`), copies of one run counted once; each run
    left out is logged as a warning naming it and why.

    Raises:
        FileNotFoundError: a path that does not exist.
        NotADirectoryError: a path that is a file.
    """
    return scan_runs(paths)[0]


def scan_runs(paths: Iterable[str | Path]) -> tuple[list[Run], dict[Path, str]]:
    """Every run directory under ``paths`` read (docs/run-directory.md#reading-a-run-directory):
    ``(runs, left out)``, ``left out`` mapping each run directory that is not in ``runs`` to
    why, each also logged as a warning. Left out: a run whose ``config.toml`` does not parse, or
    whose ``metrics.jsonl`` or ``comm.jsonl`` has a broken line before its last (the reason names
    the file and the line), and a copy of another run (the same config and seed: a copied
    directory, or one grid point run in two sweeps), which would count as a second seed; of
    copies the finished one, then the first path, is kept. A half-written last line (a run
    still being written, or killed) is left out of the run's records, with a warning.

    Raises:
        FileNotFoundError: a path that does not exist.
        NotADirectoryError: a path that is a file.
    """
    runs: list[Run] = []
    skipped: dict[Path, str] = {}
    for path in find_run_dirs(paths):
        try:
            runs.append(_read_run(path))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            skipped[path] = str(exc)
    kept: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (not r.finished, str(r.path))):
        key = _result_identity(run.config)
        if key in kept:
            skipped[run.path] = (
                f"a copy of {kept[key].path} (same config and seed {run.get('run.seed')}): "
                "counted once"
            )
        else:
            kept[key] = run
    for path, why in skipped.items():
        log.warning("left out the run %s: %s", path, why)
    return [r for r in runs if r.path not in skipped], skipped


def _read_run(path: Path) -> Run:
    """A :class:`Run` with its records read (so that a broken file shows now, naming itself).

    Raises:
        ValueError: ``config.toml`` does not parse, or a broken line in ``metrics.jsonl`` or
            ``comm.jsonl`` before its last.
    """
    run = RunDir(path)
    try:
        config = tomllib.loads(run.config.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{run.config}: not valid TOML ({exc})") from None
    out = Run(path, config, run.finished)
    out.metrics  # noqa: B018 (read now: cached, and a broken line shows here)
    out.comm  # noqa: B018
    return out


def _result_identity(config: Mapping[str, Any]) -> str:
    """What makes two runs' results the same run: the config but for :data:`_NOT_RESULT`."""
    flat = _flatten(config)
    kept = {
        k: v
        for k, v in flat.items()
        if not any(k == s or k.startswith(s + ".") for s in _NOT_RESULT)
    }
    return json.dumps(kept, sort_keys=True, default=str)


def method_labels(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(label, split)`` pairs a run of ``config`` reports (see the module docstring)."""
    fed = config.get("federation", {})
    algo = fed.get("algorithm", "fedamole")
    spec = registry().get(algo)  # None: an algorithm no longer registered, labelled by its name
    label = algo if spec is None else spec.label
    if spec is not None and spec.label_flags is not None:
        label += spec.label_flags(config)
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
    flat = _flatten(config)
    spec = registry().get(config.get("federation", {}).get("algorithm", "fedamole"))
    own = "baselines" if spec is None else spec.settings
    # the other algorithms' settings say nothing about this run's method
    skip = (*_NOT_METHOD, *ignore, *(t for t in _SETTINGS if t != own))
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(s + ".") for s in skip)}


def _flatten(node: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`~fedamole.config.flat_fields` with lists as JSON text (hashable, printable)."""
    from fedamole.config import flat_fields

    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flat_fields(node).items()}


def _disambiguate(items: list[Entry]) -> None:
    """Append ``[field=value, ...]`` to labels shared by runs of different settings. A field a
    run's config lacks (written before the field existed) has its default value."""
    from fedamole.config import Config

    defaults = _flatten(Config().to_dict())
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
