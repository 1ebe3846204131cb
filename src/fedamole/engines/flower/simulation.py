"""``fedamole run CONFIG --engine flower``: the experiment on Flower's simulation engine (Ray).

One virtual SuperNode per client (``partition-id`` = client index), each ClientApp in a Ray actor
with ``flower.client_cpus`` CPUs and ``flower.client_gpus`` GPUs; the ServerApp runs in this
process, so it writes the run directory exactly as the embedded engine does (plus ``wire.jsonl``
and the clients' state snapshots under ``checkpoints/clients``). An actor loads the backbone once
and keeps it for every message it serves.

We start it with ``flwr.simulation.run_simulation``, which Flower marks deprecated in favour of
``flwr run`` against a local SuperLink. We keep it because it runs our ServerApp object in this
process with the settings we give it; ``flwr run`` would start a detached SuperLink that outlives
the command and pass settings only through the app's run config.

Ray waits forever for resources that do not exist, so they are checked before starting: a client
may ask for at most this machine's cores and GPUs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedamole.config import Config
from fedamole.engines.flower import require_flower
from fedamole.engines.summary import RunResult
from fedamole.rundir import RecordHook, RunDir

__all__ = ["backend_config", "run_flower_simulation"]

log = logging.getLogger("fedamole")


def backend_config(cfg: Config) -> dict:
    """Ray backend settings from ``cfg.flower``.

    Raises:
        ValueError: a client asks for more CPUs or GPUs than this machine has.
    """
    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    f = cfg.flower
    if f.client_cpus > cpus:
        raise ValueError(
            f"`flower.client_cpus` ({f.client_cpus:g}) must be <= this machine's {cpus} cores "
            "(Ray would wait forever for them)"
        )
    if f.client_gpus > gpus:
        raise ValueError(
            f"`flower.client_gpus` ({f.client_gpus:g}) must be <= this machine's {gpus} GPUs; "
            "set `flower.client_gpus=0` to run on CPU"
        )
    return {
        "client_resources": {"num_cpus": f.client_cpus, "num_gpus": f.client_gpus},
        "init_args": {"num_cpus": cpus, "num_gpus": gpus, "logging_level": "ERROR"},
    }


def run_flower_simulation(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_record: RecordHook | None = None,
) -> RunResult:
    """Run (or resume) one experiment on Flower's simulation engine; see the module docstring.
    ``on_record`` is called with every ``metrics.jsonl`` record (the ServerApp runs in this
    process; :func:`~fedamole.engines.common.run_federation`).

    Raises:
        FlowerUnavailableError: ``flwr`` or ``ray`` is not installed.
        ValueError: impossible client resources.
        RuntimeError: the simulation ended without finishing the run.
    """
    require_flower(simulation=True)
    from flwr.simulation import run_simulation

    from fedamole.engines.flower import client_app
    from fedamole.engines.flower.server_app import ServerSettings, make_server_app

    backend = backend_config(cfg)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    settings = ServerSettings(
        cfg,
        run_dir,
        resume=resume,
        overwrite=overwrite,
        state_dir=RunDir(run_dir).client_checkpoints,
        on_record=on_record,
    )
    flwr_log = logging.getLogger("flwr")  # Flower prints to its own console handler;
    propagate, flwr_log.propagate = flwr_log.propagate, False  # don't print its lines twice
    try:
        run_simulation(
            server_app=make_server_app(settings),
            client_app=client_app.app,
            num_supernodes=cfg.federation.num_clients,
            backend_config=backend,
        )
    finally:
        flwr_log.propagate = propagate
    if settings.result is None:
        raise RuntimeError(f"the Flower simulation stopped before the run ended; see {run_dir}")
    return settings.result
