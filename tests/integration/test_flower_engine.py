"""The Flower engine: lossless records, the ServerApp/ClientApp on an in-process Grid (equal to the
embedded engine, resume, silent nodes, the clients' snapshots and ``fedamole export`` of them), and
one real simulation through ``fedamole run`` (equal to the embedded engine, and its export)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="the Flower engine needs `make install-flower`")

from fedamole.algorithms import ALGORITHMS, get_algorithm  # noqa: E402
from fedamole.algorithms.base import ClientContext  # noqa: E402
from fedamole.algorithms.lora_common import select_parts, set_lora_state  # noqa: E402
from fedamole.data import load_federated_data  # noqa: E402
from fedamole.engines.embedded import run_embedded  # noqa: E402
from fedamole.engines.flower import client_app  # noqa: E402
from fedamole.engines.flower import server_app as flower_server  # noqa: E402
from fedamole.engines.flower.records import (  # noqa: E402
    message_from_record,
    message_to_record,
    state_from_records,
    state_to_records,
)
from fedamole.export import MANIFEST, README, export_client, load_exported  # noqa: E402
from fedamole.federated.messages import ClientMessage, ServerMessage  # noqa: E402
from fedamole.models import load_model_and_tokenizer  # noqa: E402
from fedamole.rundir import (  # noqa: E402
    checkpoint_info,
    load_checkpoint,
    read_jsonl,
)
from tests.conftest import result_records  # noqa: E402

from .flower_grid import FakeGrid, wire  # noqa: E402

pytestmark = pytest.mark.flower


@pytest.fixture(scope="module")
def embedded_run(smoke, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "embedded"
    run_embedded(smoke, path, progress=False)
    return path


def _same_message(a, b) -> None:
    assert type(a) is type(b) and (a.round, a.client) == (b.round, b.client)
    assert list(a.tensors) == list(b.tensors)
    for key, t in a.tensors.items():
        u = b.tensors[key]
        assert (t.dtype, t.shape) == (u.dtype, u.shape), key
        assert torch.equal(_bits(t), _bits(u)), key
    assert a.config == b.config and a.metrics == b.metrics
    assert {k: type(v) for k, v in a.config.items()} == {k: type(v) for k, v in b.config.items()}
    assert {k: type(v) for k, v in a.metrics.items()} == {k: type(v) for k, v in b.metrics.items()}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)  # bitwise: NaN == NaN, -0.0 != 0.0


def _round_trip(msg):
    return message_from_record(wire(message_to_record(msg)))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_message_of_every_algorithm_round_trips(name, smoke):
    """Every message a whole federation of ``name`` exchanges survives records + serialization."""
    cfg = smoke.replace(**{"federation.algorithm": name})
    model, tokenizer = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu")
    algo = get_algorithm(name)(cfg)
    model = algo.prepare_model(model)
    data = load_federated_data(cfg)
    if algo.observes_partition:  # as the engines do: the partition before setup
        algo.observe_partition(data.client_categories())
    algo.setup(model)
    contexts = [ClientContext(c, data.clients[c], model, tokenizer) for c in range(3)]
    seen = set()
    for rnd in range(cfg.federation.rounds + 1):
        updates = {}
        for client, msg in algo.configure_round(rnd).items():
            _same_message(msg, _round_trip(msg))
            update = algo.local_update(rnd, msg, contexts[client])
            _same_message(update, _round_trip(update))
            updates[client] = update
            seen |= {(type(m).__name__, k.split(":")[0]) for m in (msg, update) for k in m.tensors}
            seen |= {(type(m).__name__, "empty") for m in (msg, update) if not m.tensors}
            arrays, manifest = state_to_records(contexts[client].state)
            restored = state_from_records(wire(arrays), wire(manifest))
            assert json.dumps(_plain(restored)) == json.dumps(_plain(contexts[client].state))
        algo.aggregate(rnd, updates)
    assert ("ServerMessage", "empty") in seen or name != "fedamole"


def _plain(value):
    if isinstance(value, torch.Tensor):
        return [str(value.dtype), list(value.shape), value.flatten().tolist()]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def test_odd_tensors_and_scalars_round_trip():
    msg = ClientMessage(
        4,
        2,
        {
            "experts:m:A": torch.randn(2, 3, 5),
            "bf16": torch.randn(3, 2).to(torch.bfloat16),
            "half": torch.randn(4).half(),
            "ids:m": torch.arange(3),
            "empty": torch.zeros(0, 4),
            "scalar": torch.tensor(1.5),
            "strided": torch.randn(4, 6)[:, ::2],
            "flag": torch.tensor([True, False]),
        },
        {"train": True, "lr": 1e-3, "steps": 3, "note": "x"},
        {"test/score": 0.25, "train/tokens": 128},
    )
    _same_message(msg, _round_trip(msg))
    assert _round_trip(ServerMessage(0, 1)) == ServerMessage(0, 1)
    with pytest.raises(ValueError, match="not a fedamole message"):
        message_from_record(flwr.app.RecordDict())


def _serve(cfg, run_dir, grid, **kwargs):
    settings = flower_server.ServerSettings(cfg, run_dir, **kwargs)
    return flower_server.serve(grid, settings)


def _metrics(path):
    """(round, client, split, metric, step, value): per-step records travel through Flower too."""
    return [
        (r["round"], r["client"], r["split"], r["metric"], r.get("step"), r["value"])
        for r in result_records(path)
    ]


def _assert_same_run(a, b, rel=1e-5) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [m[:5] for m in ma] == [m[:5] for m in mb]
    assert any(m[4] is not None for m in ma)
    for x, y in zip(ma, mb, strict=True):
        assert y[5] == pytest.approx(x[5], rel=rel, abs=1e-12), x[:5]
    assert (a / "comm.jsonl").read_text() == (b / "comm.jsonl").read_text()
    pa, pb = (list(read_jsonl(run / "predictions.jsonl")) for run in (a, b))
    keys = ("round", "client", "split", "example")
    assert pa and [[r[k] for k in keys] for r in pa] == [[r[k] for k in keys] for r in pb]
    for x, y in zip(pa, pb, strict=True):
        assert y.get("score") == pytest.approx(x.get("score"), rel=rel, abs=1e-12), x
    names = sorted(p.name for p in (a / "assignments").iterdir())
    assert names == sorted(p.name for p in (b / "assignments").iterdir())
    for name in names:
        assert (a / "assignments" / name).read_text() == (b / "assignments" / name).read_text()


def test_apps_on_an_in_process_grid_equal_the_embedded_engine(smoke, embedded_run, tmp_path):
    grid = FakeGrid(3, ephemeral=True)  # a fresh ClientApp "process" per message, as deployed
    result = _serve(smoke, tmp_path / "r", grid)
    _assert_same_run(embedded_run, tmp_path / "r")
    assert result.failures == 0
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(sent) == 3 * (smoke.federation.rounds + 1)
    assert {m.metadata.dst_node_id for m in sent} == set(grid.contexts)
    wire_log = list(read_jsonl(tmp_path / "r" / "wire.jsonl"))
    assert len(wire_log) == len(sent)
    assert all(w["down_serialized"] > w["down_payload"] for w in wire_log)
    assert all(w["load_s"] > 0 for w in wire_log)  # ephemeral: every message loads the backbone


@pytest.mark.parametrize("name", ["flexlora", "hetlora", "fedalt", "fedlease", "pfedmoe"])
def test_new_peers_on_the_grid_equal_the_embedded_engine(smoke, tmp_path, name):
    """Clients of different (for HetLoRA, shrinking) ranks, each message its own shapes;
    FedALT, each client its own rest of world; FedLEASE, a warm-up round with no download, then
    the experts and each client's cluster router; pFedMoE, a local expert and gate per client."""
    cfg = smoke.replace(
        **{
            "federation.algorithm": name,
            "baselines.ranks.values": [2, 5, 3],
            "baselines.hetlora.reg_lambda": 1.0,
            "baselines.hetlora.prune_gamma": 0.5,
        }
    )
    run_embedded(cfg, tmp_path / "embedded", progress=False)
    result = _serve(cfg, tmp_path / "grid", FakeGrid(3))
    assert result.failures == 0
    _assert_same_run(tmp_path / "embedded", tmp_path / "grid")


def test_killed_server_resumes_exactly(smoke, embedded_run, tmp_path, monkeypatch):
    """A ServerApp killed in round 2 resumes from the checkpoint in a new Flower run (new node
    ids, empty context.state): the clients' snapshots make it equal the uninterrupted run."""

    def killed_in_round_2(rnd):
        if rnd == 2:
            raise KeyboardInterrupt("simulated kill")

    state_dir = tmp_path / "r" / "checkpoints" / "clients"
    with pytest.raises(KeyboardInterrupt):
        _serve(smoke, tmp_path / "r", FakeGrid(3), state_dir=state_dir, on_round=killed_in_round_2)
    assert not (tmp_path / "r" / "done.json").exists()
    _serve(smoke, tmp_path / "r", FakeGrid(3, base=5000), resume=True, state_dir=state_dir)
    _assert_same_run(embedded_run, tmp_path / "r")
    assert (tmp_path / "r" / "done.json").exists()  # the Flower engine marks its runs done too


def test_killed_server_with_damaged_files_resumes_exactly(smoke, embedded_run, tmp_path):
    """The resume checks are the engines' shared ones: on Flower too, a lost checkpoints/last
    resumes from checkpoints/best (the clients pick their snapshot from before the replayed
    round), and comm.jsonl and an assignment are rebuilt from the checkpoint."""

    def killed_in_round_2(rnd):
        if rnd == 2:
            raise KeyboardInterrupt("simulated kill")

    run_dir = tmp_path / "r"
    state_dir = run_dir / "checkpoints" / "clients"
    with pytest.raises(KeyboardInterrupt):
        _serve(smoke, run_dir, FakeGrid(3), state_dir=state_dir, on_round=killed_in_round_2)
    shutil.rmtree(run_dir / "checkpoints" / "last")
    (run_dir / "comm.jsonl").unlink()
    (run_dir / "assignments" / "round_000.json").unlink()
    _serve(smoke, run_dir, FakeGrid(3, base=5000), resume=True, state_dir=state_dir)
    _assert_same_run(embedded_run, run_dir)


def test_silent_node_is_left_out_then_rejoins(smoke, tmp_path, caplog):
    cfg = smoke.replace(**{"flower.round_timeout": 0.1})
    grid = FakeGrid(3)
    silent = 1001
    original = grid.send_and_receive

    def drop_round_1(messages, *, timeout=None):
        messages = list(messages)
        grid.silent = {silent} if any(m.metadata.group_id == "1" for m in messages) else set()
        return original(messages, timeout=timeout)

    grid.send_and_receive = drop_round_1
    result = _serve(cfg, tmp_path / "r", grid)
    assert result.failures == 1
    metrics = _metrics(tmp_path / "r")
    assert not [m for m in metrics if m[0] == 1 and m[1] == 1]
    assert [m for m in metrics if m[0] == 2 and m[1] == 1]
    assert "client 1 failed: TimeoutError" in (tmp_path / "r" / "log.txt").read_text()


def test_node_with_a_bad_partition_id_is_refused(smoke, tmp_path):
    cfg = smoke.replace(**{"flower.connect_timeout": 1.0})
    grid = FakeGrid(3)
    grid.contexts[1002].node_config["partition-id"] = 7
    with pytest.raises(TimeoutError, match=r"no node with partition-id in \[2\]"):
        _serve(cfg, tmp_path / "r", grid)
    assert "partition-id" in (tmp_path / "r" / "log.txt").read_text()


def test_client_state_lives_in_context_state(smoke, tmp_path):
    grid = FakeGrid(3, ephemeral=True)
    _serve(smoke, tmp_path / "r", grid)
    for ctx in grid.contexts.values():
        state = state_from_records(
            ctx.state.array_records["fedamole.state.tensors"],
            ctx.state.config_records["fedamole.state"],
        )
        assert "modules" in state and "stream" in state
    assert client_app.SETUP_KEY in next(iter(grid.contexts.values())).state


def _logits(model, tokenizer) -> torch.Tensor:
    """Logits of two prompts (the second left-padded) on their real tokens."""
    batch = tokenizer(["Name a colour.", "Add 2 and 3."], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits[batch["attention_mask"].bool()]


def _lora_logits(cfg, adapter, tokenizer) -> torch.Tensor:
    """:func:`_logits` of a fresh backbone with the algorithm's LoRA adapter set to ``adapter``."""
    model, _ = load_model_and_tokenizer(
        cfg.model.name, dtype=cfg.model.dtype, device="cpu", seed=cfg.run.seed
    )
    model = get_algorithm(cfg.federation.algorithm)(cfg).prepare_model(model)
    set_lora_state(model, adapter)
    return _logits(model, tokenizer)


def test_clients_keep_the_snapshot_of_the_best_round(tmp_path):
    """Besides its last two snapshots a client keeps the one of the round the server names (the
    run's best), or, when it failed in that round, the one it holds the state of that round in."""
    context = flwr.app.Context(
        run_id=1, node_id=1, node_config={}, state=flwr.app.RecordDict(), run_config={}
    )
    folder = tmp_path / "client_000"
    for rnd in (0, 1, 3, 4, 5, 6):  # failed in round 2, whose state is that after round 1
        client_app._store_state(context, {"round": rnd}, 0, rnd, tmp_path, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["round_001", "round_005", "round_006"]
    client_app._store_state(context, {"round": 7}, 0, 7, tmp_path, keep=6)
    assert sorted(p.name for p in folder.iterdir()) == ["round_006", "round_007"]
    client_app._store_state(context, {"round": 8}, 0, 8, tmp_path)  # no best round: the last two
    assert sorted(p.name for p in folder.iterdir()) == ["round_007", "round_008"]


def test_export_reads_the_clients_snapshots(smoke, tmp_path):
    """FedSA-LoRA evaluated globally on the in-process grid, whose checkpoints hold no client
    state: `export --round last` (the evaluation-only round) and `--round best` (the received
    model: the averaged A with the client's own B) read the clients' snapshots of those rounds,
    the best one kept even when it is older than the last two; a pruned snapshot and a run
    without snapshots are refused, naming the rounds and the fix."""
    overrides = {"train.steps": 2, "data.test_cap": 2, "eval.max_new_tokens": 2}
    cfg = smoke.replace(
        **{**overrides, "federation.algorithm": "fedsa_lora", "eval.timing": "global"}
    )
    path = tmp_path / "r"
    state_dir = path / "checkpoints" / "clients"
    _serve(cfg, path, FakeGrid(3), state_dir=state_dir)
    assert not load_checkpoint(path / "checkpoints")["clients"]
    last, best = (checkpoint_info(path / "checkpoints", n)["round"] for n in ("last", "best"))
    assert last == cfg.federation.rounds + 1 and best < last
    for c in range(3):
        kept = sorted(p.name for p in (state_dir / f"client_{c:03d}").iterdir())
        assert kept == [f"round_{r:03d}" for r in sorted({best, last - 1, last})]

    def own(rnd):
        return load_checkpoint(state_dir / "client_001" / f"round_{rnd:03d}")["state"]["lora"]

    out = export_client(path, 1, tmp_path / "last")
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["round"], manifest["checkpoint"], manifest["model"]) == (
        last,
        "last",
        "received",
    )
    loaded, tokenizer = load_exported(out, device="cpu")
    expected = _lora_logits(cfg, own(last), tokenizer)
    torch.testing.assert_close(_logits(loaded, tokenizer), expected, rtol=0, atol=1e-5)

    out = export_client(path, 1, tmp_path / "best", round="best")
    assert json.loads((out / MANIFEST).read_text())["model"] == "received"
    server = load_checkpoint(path / "checkpoints", "best")["server"]
    received = {**own(best), **select_parts(server["global"], ("lora_A",))}
    loaded, tokenizer = load_exported(out, device="cpu")
    expected = _lora_logits(cfg, received, tokenizer)
    torch.testing.assert_close(_logits(loaded, tokenizer), expected, rtol=0, atol=1e-5)

    for rnd in range(best + 1):  # as a run written before the clients kept the best round's
        shutil.rmtree(state_dir / "client_001" / f"round_{rnd:03d}", ignore_errors=True)
    left = sorted({last - 1, last} - set(range(best + 1)))
    with pytest.raises(
        ValueError,
        match=rf"client 1's state after round {best} is no longer kept.*holds rounds "
        rf"{re.escape(str(left))}\. Export --round last instead",
    ):
        export_client(path, 1, tmp_path / "pruned", round="best")
    assert not (tmp_path / "pruned").exists()
    shutil.rmtree(state_dir / "client_001")  # as on a deployment: snapshots on the nodes
    with pytest.raises(ValueError, match=r"holds no snapshot of it\. A deployment .*state-dir"):
        export_client(path, 1, tmp_path / "none")
    with pytest.raises(ValueError, match=r"client 3 is not in the run; it has clients \[0, 1, 2\]"):
        export_client(path, 3, tmp_path / "three")


@pytest.fixture(scope="module")
def simulation_run(repo, tmp_path_factory):
    """`fedamole run configs/smoke.toml --engine flower`: one Ray simulation for the module."""
    tmp = tmp_path_factory.mktemp("simulation")
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp / "flwr"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    cmd = [sys.executable, "-m", "fedamole", "run", str(repo / "configs" / "smoke.toml")]
    cmd += ["--engine", "flower", "--run-dir", str(tmp / "flower")]
    # a guard against a hung Ray start, not a speed limit: ~1 min idle, over 5 on a loaded machine
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "flower"


@pytest.mark.slow
def test_simulation_equals_embedded(simulation_run, embedded_run):
    """`fedamole run configs/smoke.toml --engine flower` (Ray) equals `--engine embedded`."""
    _assert_same_run(embedded_run, simulation_run)
    assert (simulation_run / "checkpoints" / "last" / "state.json").is_file()


@pytest.mark.slow
def test_simulation_exports_the_embedded_runs_models(simulation_run, embedded_run, tmp_path):
    """`fedamole export` of the simulation (its clients' snapshots) gives the embedded run's
    export: the same manifest and README, and a model with the same logits."""
    for which in ("last", "best"):
        flower = export_client(simulation_run, 1, tmp_path / f"flower-{which}", round=which)
        embedded = export_client(embedded_run, 1, tmp_path / f"embedded-{which}", round=which)
        manifests = [json.loads((out / MANIFEST).read_text()) for out in (flower, embedded)]
        for manifest in manifests:  # the best round's score agrees to rel 1e-5 (_assert_same_run)
            manifest.get("selection", {}).pop("value", None)
        assert manifests[0] == manifests[1]
        assert (flower / README).read_text() == (embedded / README).read_text()
        (model, tokenizer), (expected, _) = (
            load_exported(o, device="cpu") for o in (flower, embedded)
        )
        torch.testing.assert_close(
            _logits(model, tokenizer), _logits(expected, tokenizer), rtol=0, atol=1e-5
        )
