"""``fedamole deploy-local``: a real Flower deployment on 127.0.0.1, with TLS and SuperNode auth.

What it does, in a work folder (a temporary one unless given):

1. ``tls/``: a throw-away certificate authority and a SuperLink certificate for ``127.0.0.1`` and
   ``localhost`` (SAN), made on the spot with ``cryptography``.
2. ``keys/``: one ECDSA P-384 key pair per SuperNode (OpenSSH format, as Flower expects).
3. ``data/client_K.jsonl``: each data owner's own file (the config's dataset, partitioned as
   the config says, written in the ``local`` format); a node reads only its own.
4. A SuperLink with ``--enable-supernode-auth``; every node's public key registered with
   ``flwr supernode register``; N SuperNodes with ``--node-config 'partition-id=K
   data-file="..." state-dir="..."'``; then ``flwr run deploy/flower`` with the experiment's
   config, waiting (``--stream``) until the run ends.
5. Every process it started is stopped, by its own PID (and the process group it leads, which holds
   the ServerApp and ClientApp processes Flower spawns), whether the run succeeded or failed.

``FLWR_HOME`` points into the work folder and ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``
keeps Flower from building a fresh environment for the app: the processes use this interpreter's.

This module is the orchestration only; the parts live beside it, public so tests can build other
topologies (an unregistered node, a node killed mid-round): :mod:`.certificates` makes the TLS
files and node keys (steps 1 and 2), :mod:`.processes` starts, supervises and stops the processes
and runs the ``flwr`` CLI (steps 4 and 5).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedamole.config import Config
from fedamole.engines.flower.certificates import TlsFiles, make_node_key, make_tls
from fedamole.engines.flower.processes import (
    LocalProcesses,
    flower_env,
    free_port,
    run_flwr,
    sigterm_as_exit,
    superlink_command,
    supernode_command,
    wait_for_port,
)
from fedamole.engines.summary import RunResult, summarize_run
from fedamole.rundir import RunDir

__all__ = ["APP_DIR", "LocalDeployment", "deploy_local", "write_node_files"]

log = logging.getLogger("fedamole")

APP_DIR = Path(__file__).resolve().parents[4] / "deploy" / "flower"
_CONNECTION = "fedamole-local"


@dataclass(frozen=True)
class LocalDeployment:
    """A running local deployment, as :func:`deploy_local` hands it to ``on_started``."""

    procs: LocalProcesses
    port: int
    tls: TlsFiles
    workdir: Path
    run_dir: Path


def write_node_files(cfg: Config, folder: Path) -> list[Path]:
    """Each client's share of the config's dataset as its own local file (``local`` format).

    Args:
        cfg: the experiment; its dataset is loaded and partitioned as for any run.
        folder: where to write ``client_K.jsonl`` (created if needed).

    Returns:
        The files, in client order: train, embedding, eval and test examples, one JSON per line.
    """
    from fedamole.data import load_federated_data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for client, data in enumerate(load_federated_data(cfg).clients):
        path = folder / f"client_{client}.jsonl"
        examples = (*data.train, *data.embedding, *data.eval, *data.test)
        lines = [
            json.dumps(
                {
                    "instruction": ex.instruction,
                    "context": ex.context,
                    "response": ex.response,
                    "category": ex.category,
                    **({"choices": list(ex.choices)} if ex.choices else {}),
                }
            )
            for ex in examples
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def deploy_local(
    config: Path,
    overrides: Sequence[str] = (),
    *,
    nodes: int,
    workdir: Path,
    run_dir: Path | None = None,
    app_dir: Path = APP_DIR,
    timeout: float = 1800.0,
    on_started: Callable[[LocalDeployment], None] | None = None,
) -> RunResult:
    """Run one experiment on a local SuperLink and ``nodes`` SuperNodes; see the module docstring.

    Args:
        config: the experiment TOML; ``federation.num_clients`` must equal ``nodes``.
        overrides: dotted ``key=value`` overrides.
        nodes: how many SuperNodes (data owners) to start.
        workdir: folder for certificates, keys, data files, logs and ``FLWR_HOME``.
        run_dir: the run directory (default ``run.out_dir/run.name``).
        app_dir: the Flower app directory (``deploy/flower``).
        timeout: seconds the whole run may take.
        on_started: called once every process is up, just before ``flwr run`` (tests use it to
            kill a node mid-round or start an unregistered one).

    Raises:
        ValueError: ``nodes`` differs from ``federation.num_clients``.
        RuntimeError: a process failed to start, or the run failed or timed out; the message names
            the log to read.
    """
    from fedamole.config import load

    cfg = load(config, list(overrides))
    if nodes != cfg.federation.num_clients:
        raise ValueError(
            f"--nodes ({nodes}) must equal `federation.num_clients` "
            f"({cfg.federation.num_clients}); pass federation.num_clients={nodes}"
        )
    workdir = workdir.resolve()
    run_dir = (run_dir or Path(cfg.run.out_dir) / cfg.run.name).resolve()
    tls = make_tls(workdir / "tls")
    data_files = write_node_files(cfg, workdir / "data")
    flwr_home = workdir / "flwr-home"
    port = free_port()
    _write_connection(flwr_home, f"127.0.0.1:{port}", tls.ca_cert)
    # The nodes share this machine's cores: more torch threads than cores makes OpenMP spin (a
    # tiny model's round went from 0.07 s to 4 s with 2 threads per process on a busy 2-core box).
    threads = max(1, (os.cpu_count() or 1) // nodes)
    with sigterm_as_exit(), LocalProcesses(flower_env(flwr_home), workdir / "logs") as procs:
        procs.start("superlink", superlink_command(port, tls))
        wait_for_port(port, procs, "superlink")
        _start_nodes(procs, port, tls, workdir, data_files, threads=threads)
        if on_started is not None:
            on_started(LocalDeployment(procs, port, tls, workdir, run_dir))
        run_config = (
            f'config="{Path(config).resolve()}" overrides="{" ".join(overrides)}" '
            f'run-dir="{run_dir}"'
        )
        t0 = time.perf_counter()
        run_flwr(
            procs.env,
            "run",
            str(app_dir),
            _CONNECTION,
            "--run-config",
            run_config,
            "--stream",
            timeout=timeout,
            log_file=workdir / "logs" / "flwr-run.log",
        )
        log.info("flwr run finished in %.1f s", time.perf_counter() - t0)
    if not RunDir(run_dir).metrics.exists():
        raise RuntimeError(f"the run wrote no metrics to {run_dir}; see {workdir / 'logs'}")
    return summarize_run(run_dir)


def _start_nodes(
    procs: LocalProcesses,
    port: int,
    tls: TlsFiles,
    workdir: Path,
    data_files: Sequence[Path],
    *,
    threads: int,
) -> None:
    """One registered key pair and one SuperNode per data file."""
    for k, data_file in enumerate(data_files):
        private, public = make_node_key(workdir / "keys", f"node_{k}")
        run_flwr(procs.env, "supernode", "register", str(public), _CONNECTION)
        state_dir = workdir / "node-state" / f"node_{k}"
        node_config = f'partition-id={k} data-file="{data_file}" state-dir="{state_dir}"'
        procs.start(
            f"supernode_{k}",
            supernode_command(port, free_port(), tls, private, node_config),
            env={"OMP_NUM_THREADS": str(threads)},
        )


def _write_connection(flwr_home: Path, address: str, ca_cert: Path | None) -> None:
    """The ``flwr`` CLI's default connection to the local SuperLink, in ``FLWR_HOME``."""
    import tomli_w

    flwr_home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, object] = {"address": address}
    if ca_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca_cert)
    body = {"superlink": {"default": _CONNECTION, _CONNECTION: conn}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(body))
