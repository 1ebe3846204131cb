"""A real loopback deployment: SuperLink + 3 SuperNodes with TLS and SuperNode authentication.

One deployment (about two minutes on 2 cores: Flower starts a fresh ClientApp process per message)
checks at once that the run completes its rounds, that a node with an unregistered key is refused,
that killing a SuperNode during round 2 does not stop the run, and that no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower engine needs `make install-flower`")

from fedamole.engines.flower.certificates import make_node_key
from fedamole.engines.flower.deploy import LocalDeployment, deploy_local
from fedamole.engines.flower.processes import free_port, supernode_command
from tests.conftest import result_records

pytestmark = [pytest.mark.slow, pytest.mark.flower]


def _process_groups() -> dict[int, tuple[int, str]]:
    """pid -> (process group, command line) of every live (not zombie) process here."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fields[0] != "Z":  # field 3: state; a zombie has exited, only its entry remains
                out[int(entry.name)] = (int(fields[2]), cmdline)  # field 5: pgrp
    return out


def _kill_when_round_starts(dep: LocalDeployment, node: str, rnd: int, killed: dict) -> None:
    log_file, deadline = dep.run_dir / "log.txt", time.monotonic() + 400
    while time.monotonic() < deadline:
        if log_file.exists() and f"=== round {rnd}/" in log_file.read_text():
            pid = dep.procs.procs[node].pid
            os.killpg(pid, signal.SIGKILL)  # a crash: no goodbye to the SuperLink
            killed["pid"], killed["at"] = pid, time.monotonic()
            return
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process accounting reads /proc")
def test_loopback_deployment_with_tls_auth_and_a_node_killed_in_round_2(repo, tmp_path):
    started: dict = {}
    killed: dict = {}

    def on_started(dep: LocalDeployment) -> None:
        intruder_key, _ = make_node_key(dep.workdir / "intruder", "intruder")  # never registered
        cmd = supernode_command(
            dep.port, free_port(), dep.tls, intruder_key, "partition-id=0", max_wait_time=10
        )
        dep.procs.start("intruder", cmd)
        started["groups"] = {p.pid for p in dep.procs.procs.values()}
        started["logs"] = dep.workdir / "logs"
        watcher = threading.Thread(
            target=_kill_when_round_starts, args=(dep, "supernode_2", 2, killed), daemon=True
        )
        watcher.start()

    run_dir = tmp_path / "run"
    result = deploy_local(
        repo / "configs" / "smoke.toml",
        ["flower.round_timeout=50", "flower.connect_timeout=120"],
        nodes=3,
        workdir=tmp_path / "work",
        run_dir=run_dir,
        timeout=400,
        on_started=on_started,
    )

    # the run completed its rounds; node 2 was left out of round 2 only
    assert result.rounds == 2
    clients_by_round: dict[int, set[int]] = {}
    for rec in result_records(run_dir):
        if rec["split"] != "server":  # the server's RSEA diagnostics (client -1)
            clients_by_round.setdefault(rec["round"], set()).add(rec["client"])
    assert clients_by_round[0] == clients_by_round[1] == {0, 1, 2}
    assert "pid" in killed, "round 2 never started"
    assert clients_by_round[2] == {0, 1}
    assert "round 2: client 2 failed" in (run_dir / "log.txt").read_text()
    assert json.loads((run_dir / "assignments" / "round_002.json").read_text())

    # the unregistered node was refused: the SuperLink turned it away, it never became a client
    assert "Attempted to register SuperNode" in (started["logs"] / "superlink.log").read_text()
    intruder = (started["logs"] / "intruder.log").read_text()
    assert "Failed to activate SuperNode" in intruder or "Connection attempt failed" in intruder
    assert "3 nodes connected" in (run_dir / "log.txt").read_text()
    assert "both claim partition-id" not in (run_dir / "log.txt").read_text()

    # every process the deployment started (and everything they spawned) is gone
    left = {pid: cmd for pid, (pgrp, cmd) in _process_groups().items() if pgrp in started["groups"]}
    assert not left, f"processes left running: {left}"
