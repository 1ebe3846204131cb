"""Find and read run directories (docs/run-directory.md#reading-a-run-directory): a :class:`Run`
per readable directory, its records read lazily; damaged runs and copies of one run left out with
the reason. What a run *means* (its method and scenario labels, the tables' entries) is
:mod:`fedamole.analysis.results`."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fedamole.rundir import CONFIG, SERVER_CLIENT, Fold, RunDir, fold, is_backup, read_jsonl

__all__ = ["Run", "find_run_dirs", "flat_config", "load_runs", "scan_runs"]

log = logging.getLogger(__name__)

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
    flat = flat_config(config)
    kept = {
        k: v
        for k, v in flat.items()
        if not any(k == s or k.startswith(s + ".") for s in _NOT_RESULT)
    }
    return json.dumps(kept, sort_keys=True, default=str)


def flat_config(node: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`~fedamole.config.flat_fields` with lists as JSON text (hashable, printable)."""
    from fedamole.config import flat_fields

    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flat_fields(node).items()}
