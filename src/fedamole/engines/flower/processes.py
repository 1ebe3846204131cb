"""Starting, supervising and stopping the Flower processes of a local deployment.

A local deployment is a SuperLink, N SuperNodes and a few ``flwr`` CLI calls, all separate
processes. This module holds what runs them, independent of any experiment:

- :class:`LocalProcesses` starts each long-lived process (SuperLink, SuperNode) in its own session,
  so it leads a process group that also holds the ServerApp and ClientApp processes Flower spawns,
  and stops every group by its own PID (SIGTERM, then SIGKILL), never by name;
- :func:`superlink_command` and :func:`supernode_command` build their command lines on
  ``127.0.0.1``, with TLS and SuperNode authentication unless told otherwise;
- :func:`run_flwr` runs one ``flwr`` CLI command to completion, :func:`wait_for_port` waits until a
  started process listens, :func:`sigterm_as_exit` lets SIGTERM unwind like Ctrl-C so that the
  processes are stopped;
- :func:`flower_env` is the environment they all share: this interpreter's tools first on
  ``PATH``, a private ``FLWR_HOME`` and ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, which
  keeps Flower from building a fresh environment for the app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedamole.engines.flower.certificates import TlsFiles

__all__ = [
    "LocalProcesses",
    "flower_env",
    "free_port",
    "run_flwr",
    "sigterm_as_exit",
    "superlink_command",
    "supernode_command",
    "wait_for_port",
]

log = logging.getLogger("fedamole")


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
        """Stop every process still running, the last started first."""
        for name in reversed(list(self.procs)):
            self.stop(name)

    def log_text(self, name: str) -> str:
        """What ``name`` has written so far (empty when it wrote nothing)."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> LocalProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the started processes are stopped (main thread only;
    elsewhere it changes nothing)."""
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


def run_flwr(
    env: dict[str, str], *args: str, timeout: float = 120.0, log_file: Path | None = None
) -> str:
    """Run one ``flwr`` CLI command to completion.

    Args:
        env: its environment (:func:`flower_env`).
        *args: the arguments after ``flwr``.
        timeout: seconds it may take.
        log_file: where to write its output (stdout, then stderr), if anywhere.

    Returns:
        Its output, stdout then stderr.

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


def wait_for_port(port: int, procs: LocalProcesses, name: str, timeout: float = 60.0) -> None:
    """Wait until something listens on ``127.0.0.1:port``, while process ``name`` keeps running.

    Raises:
        RuntimeError: ``name`` exited first (the message holds the end of its log), or nothing
            listened within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited at start:\n{procs.log_text(name)[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:g} s")
