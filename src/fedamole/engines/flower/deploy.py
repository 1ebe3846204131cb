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
:class:`LocalProcesses`, :func:`make_tls` and :func:`make_node_key` are public so tests can build
other topologies (an unregistered node, a node killed mid-round).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedamole.config import Config
from fedamole.engines.common import RunResult, summarize_run

__all__ = [
    "APP_DIR",
    "LocalDeployment",
    "LocalProcesses",
    "TlsFiles",
    "deploy_local",
    "flower_env",
    "free_port",
    "make_node_key",
    "make_tls",
    "write_node_files",
]

log = logging.getLogger("fedamole")

APP_DIR = Path(__file__).resolve().parents[4] / "deploy" / "flower"
_CONNECTION = "fedamole-local"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA and the SuperLink certificate it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(folder: Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A self-signed CA and a server certificate for ``hosts`` (IPs and DNS names as SANs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedamole local CA"))
        .issuer_name(name("fedamole local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    files = TlsFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair for SuperNode authentication: ``(private, public)`` paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


def write_node_files(cfg: Config, folder: Path) -> list[Path]:
    """Each client's share of the config's dataset as its own local file (``local`` format)."""
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for Flower's processes: this interpreter's tools first on ``PATH``, a
    private ``FLWR_HOME``, and no runtime installation of app dependencies."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class LocalProcesses:
    """Processes started here, each leading its own process group; :meth:`stop_all` ends them
    (and whatever they spawned) by their own PIDs. Use as a context manager."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(
        self, name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start ``cmd`` in a new session (``env`` added to the environment), its output in
        ``logs/NAME.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{name}.log").open("ab")
        log.info("starting %s: %s", name, shlex.join(cmd))
        proc = subprocess.Popen(
            list(cmd),
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, *, timeout: float = 10.0) -> None:
        """SIGTERM the process group of ``name``, SIGKILL it after ``timeout`` seconds."""
        proc = self.procs.pop(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=timeout)
                if sig == signal.SIGTERM and not _group_alive(proc.pid):
                    break
            except subprocess.TimeoutExpired:
                continue
        proc.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> LocalProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@dataclass(frozen=True)
class LocalDeployment:
    """A running local deployment, as :func:`deploy_local` hands it to ``on_started``."""

    procs: LocalProcesses
    port: int
    tls: TlsFiles
    workdir: Path
    run_dir: Path


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


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
    with _sigterm_as_exit(), LocalProcesses(flower_env(flwr_home), workdir / "logs") as procs:
        procs.start("superlink", superlink_command(port, tls))
        _wait_for_port(port, procs, "superlink")
        _start_nodes(procs, port, tls, workdir, data_files, threads=threads)
        if on_started is not None:
            on_started(LocalDeployment(procs, port, tls, workdir, run_dir))
        run_config = (
            f'config="{Path(config).resolve()}" overrides="{" ".join(overrides)}" '
            f'run-dir="{run_dir}"'
        )
        t0 = time.perf_counter()
        _flwr(
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
    if not (run_dir / "metrics.jsonl").exists():
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
        _flwr(procs.env, "supernode", "register", str(public), _CONNECTION)
        state_dir = workdir / "node-state" / f"node_{k}"
        node_config = f'partition-id={k} data-file="{data_file}" state-dir="{state_dir}"'
        procs.start(
            f"supernode_{k}",
            supernode_command(port, free_port(), tls, private, node_config),
            env={"OMP_NUM_THREADS": str(threads)},
        )


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the started processes are stopped (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def superlink_command(port: int, tls: TlsFiles | None, *, auth: bool = True) -> list[str]:
    """``flower-superlink`` on ``127.0.0.1:port`` with TLS (``None``: ``--insecure``)."""
    cmd = ["flower-superlink", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--disable-runtime-dependency-installation"]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert)]
        cmd += ["--ssl-keyfile", str(tls.server_key)]
    if auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def supernode_command(
    superlink_port: int,
    port: int,
    tls: TlsFiles | None,
    private_key: Path | None,
    node_config: str,
    *,
    max_wait_time: float | None = None,
) -> list[str]:
    """``flower-supernode`` for a SuperLink on ``127.0.0.1:superlink_port``."""
    cmd = ["flower-supernode", "--superlink", f"127.0.0.1:{superlink_port}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--node-config", node_config]
    cmd += ["--insecure"] if tls is None else ["--root-certificates", str(tls.ca_cert)]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def _write_connection(flwr_home: Path, address: str, ca_cert: Path | None) -> None:
    import tomli_w

    flwr_home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, object] = {"address": address}
    if ca_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca_cert)
    body = {"superlink": {"default": _CONNECTION, _CONNECTION: conn}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(body))


def _flwr(
    env: dict[str, str], *args: str, timeout: float = 120.0, log_file: Path | None = None
) -> str:
    """Run one ``flwr`` CLI command to completion.

    Raises:
        RuntimeError: it failed or timed out; the message holds the end of its output.
    """
    cmd = ["flwr", *args]
    log.info("running %s", shlex.join(cmd))
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{shlex.join(cmd[:3])}` did not finish in {timeout:g} s") from exc
    output = proc.stdout + proc.stderr
    if log_file is not None:
        log_file.write_text(output)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{shlex.join(cmd[:3])}` failed (exit {proc.returncode}):\n{output[-2000:]}"
        )
    return output


def _wait_for_port(port: int, procs: LocalProcesses, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited at start:\n{procs.log_text(name)[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:g} s")
