"""Export one client's model from a run directory (:func:`export_client`; the formats:
:mod:`fedamole.export`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fedamole.algorithms.registry import algorithm_spec, resolve
from fedamole.config import Config, load
from fedamole.export.formats import FORMAT, MANIFEST, README, VERSION, exportable_algorithms
from fedamole.export.readme import readme
from fedamole.export.source import Source, base_model, pick_checkpoint
from fedamole.rundir import LAST, RunDir, load_checkpoint

__all__ = ["export_client"]


def export_client(run_dir: Path, client: int, out: Path, *, round: str | int = LAST) -> Path:
    """Write client ``client``'s model of the run in ``run_dir`` to the new folder ``out``.

    Args:
        run_dir: a run directory with ``config.toml`` and ``checkpoints/``.
        client: 0-based client id.
        out: the export folder; must not exist or be empty.
        round: ``"last"``, ``"best"`` (the report's best round), or a round number that one of
            those two checkpoints holds (see :mod:`fedamole.export`).

    Returns:
        ``out``.

    Raises:
        CheckpointError: the run has no readable checkpoint of that name (the message names the
            checkpoints it has).
        ValueError: unknown client, a round without a checkpoint, a Flower run without the
            client's state snapshot of that round (the message names the rounds kept), or an
            algorithm (or evaluation timing) whose models cannot be exported (the message names
            what can).
        FileExistsError: ``out`` is a non-empty folder (nothing is overwritten).
    """
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    cfg = load(run.config)
    algorithm = cfg.federation.algorithm
    export = algorithm_spec(algorithm).export
    if export is None:
        raise ValueError(
            f"cannot export a {algorithm!r} client: export supports {exportable_algorithms()}"
        )
    name, view, selection = pick_checkpoint(run_dir, cfg, round)
    state = load_checkpoint(run.checkpoints, name)
    # the embedded engine checkpoints every client's state; on Flower it is empty (the clients'
    # own snapshots hold it, read when the export needs it: Source.client_state)
    clients = state["clients"] or range(cfg.federation.num_clients)
    if client not in clients:
        raise ValueError(f"client {client} is not in the run; it has clients {sorted(clients)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    source = Source(cfg, run_dir, state, client, int(state["round"]), view)
    # written beside ``out`` and renamed into place: a failed export leaves nothing behind
    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        extra = resolve(export.writer)(source, staging)
        manifest = _manifest(cfg, source, name, export.kind, selection)
        manifest.update(extra)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        (staging / README).write_text(readme(manifest))
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _manifest(
    cfg: Config, source: Source, checkpoint: str, kind: str, selection: dict[str, Any] | None
) -> dict[str, Any]:
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "algorithm": cfg.federation.algorithm,
        "client": source.client,
        "round": source.round,
        "checkpoint": checkpoint,
        "model": source.model_kind,
        "base_model": base_model(cfg),
        "model_name": cfg.model.name,
        "model_seed": cfg.run.seed,
        "dtype": cfg.model.dtype,
        "max_length": cfg.model.max_length,
    }
    if selection is not None:
        manifest["selection"] = selection
    return manifest
