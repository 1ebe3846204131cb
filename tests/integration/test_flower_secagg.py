"""SecAgg+ smoke on the Flower engine (``configs/smoke.toml``, in-process Grid): the same runs with
``flower.secagg = "secaggplus"`` and without give the same metrics up to the quantization.

The bound: each entry of a securely aggregated mean is within ``2c/Q`` of the plain mean
(``c = clipping_range``, ``Q = quantization_range``; unweighted, each client's stochastic rounding
is off by less than one level ``2c/Q`` and the server divides the sum of ``n`` by ``n``;
:mod:`fedamole.engines.flower.secagg`), 4.8e-7 by default, against adapter entries up to ~0.2
here. Both runs train the same uploads (same seed), so the aggregated tensors differ by at most
that, plus float32 rounding; what the clients then measure moves by as little: losses agree to
1e-5 relative, and scores (argmax decisions) are equal.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="the Flower engine needs `make install-flower`")

from fedamole.algorithms.registry import registry
from fedamole.config import ConfigError
from fedamole.engines.flower import server_app as flower_server
from fedamole.rundir import load_checkpoint, read_jsonl
from tests.conftest import result_records

from .flower_grid import FakeGrid

pytestmark = pytest.mark.flower

SECURE = {"flower.secagg": "secaggplus"}


ONE_ROUND = {"federation.algorithm": "fedit", "federation.rounds": 1, "eval.timing": "global"}


def _serve(cfg, run_dir, grid=None, **kwargs):
    settings = flower_server.ServerSettings(cfg, run_dir, **kwargs)
    return flower_server.serve(grid or FakeGrid(3), settings)


def _bound(cfg) -> float:
    s = cfg.flower.secaggplus
    return 2 * s.clipping_range / s.quantization_range


def _close(a: torch.Tensor, b: torch.Tensor, bound: float) -> float:
    """The largest entry difference, after checking it against ``bound`` (plus float32's own
    rounding of the two means)."""
    err = (a.double() - b.double()).abs().max().item()
    slack = 2 * torch.finfo(torch.float32).eps * max(a.abs().max().item(), 1e-30)
    assert err <= bound + slack, (err, bound)
    return err


def _assert_same_metrics(a, b) -> None:
    ma, mb = result_records(a), result_records(b)
    assert [(r["round"], r["client"], r["split"], r["metric"]) for r in ma] == [
        (r["round"], r["client"], r["split"], r["metric"]) for r in mb
    ]
    for x, y in zip(ma, mb, strict=True):
        if x["metric"] in ("score", "accuracy", "rouge_l"):
            assert y["value"] == x["value"], x
        else:
            assert y["value"] == pytest.approx(x["value"], rel=1e-5), x


@pytest.fixture(scope="module")
def fedit_runs(smoke, tmp_path_factory):
    """FedIT, one round and the global model after it evaluated (round 2): plain and SecAgg+."""
    cfg = smoke.replace(**ONE_ROUND)
    root = tmp_path_factory.mktemp("fedit")
    _serve(cfg, root / "plain")
    result = _serve(cfg.replace(**SECURE), root / "secure")
    return cfg.replace(**SECURE), root / "plain", root / "secure", result


def test_fedit_secure_mean_equals_plain_within_quantization(fedit_runs):
    cfg, plain, secure, result = fedit_runs
    assert result.failures == 0
    a = load_checkpoint(plain / "checkpoints")["server"]["global"]
    b = load_checkpoint(secure / "checkpoints")["server"]["global"]
    assert sorted(a) == sorted(b)
    errors = [_close(a[k], b[k], _bound(cfg)) for k in sorted(a)]
    assert max(errors) > 0  # the quantization did happen: the means were not sent in the clear
    _assert_same_metrics(plain, secure)
    # comm.jsonl counts what each client contributes, in the clear or masked: the same bytes
    assert (plain / "comm.jsonl").read_text() == (secure / "comm.jsonl").read_text()


def test_fedit_uploads_nothing_in_the_clear_and_logs_the_protocol_bytes(fedit_runs):
    _, plain, secure, _ = fedit_runs
    by_round = {}
    for record in read_jsonl(secure / "wire.jsonl"):
        by_round.setdefault(record["round"], []).append(record)
    trained = [r for r in by_round[1] if "up_payload" in r]
    assert len(trained) == 3 and all(r["up_payload"] == 0 for r in trained)  # adapter held back
    plain_up = [r["up_payload"] for r in read_jsonl(plain / "wire.jsonl") if r["round"] == 1]
    assert all(up > 0 for up in plain_up)
    protocol = [r for r in by_round[1] if "secagg_up_serialized" in r]
    assert sorted(r["client"] for r in protocol) == [0, 1, 2]
    # masked int64 entries (8 bytes) for each float32 entry of the adapter (4 bytes), and more
    assert all(r["secagg_up_serialized"] > 2 * up for r, up in zip(protocol, plain_up, strict=True))
    assert all(r["secagg_down_serialized"] > 0 for r in protocol)
    assert not [r for r in by_round[2] if "secagg_up_serialized" in r]  # evaluation only
    assert "SecAgg+ mean of 3 clients" in (secure / "log.txt").read_text()


def test_fedamole_secure_shared_parts_equal_plain_within_quantization(smoke, tmp_path):
    """FedAMoLE: the shared expert and token projection through SecAgg+, the domain experts in
    the clear (the same means as without it, exactly), the same assignments."""
    secure_cfg = smoke.replace(**SECURE, **{"flower.secaggplus.experts_in_clear": True})
    _serve(smoke, tmp_path / "plain")
    result = _serve(secure_cfg, tmp_path / "secure")
    assert result.failures == 0
    a = load_checkpoint(tmp_path / "plain" / "checkpoints")["server"]["bank"]
    b = load_checkpoint(tmp_path / "secure" / "checkpoints")["server"]["bank"]
    errors = []
    for module in sorted(a):
        assert torch.equal(a[module]["A"], b[module]["A"])  # domain experts: in the clear
        assert torch.equal(a[module]["B"], b[module]["B"])
        for key in ("token_proj", "shared_A", "shared_B"):
            errors.append(_close(a[module][key], b[module][key], _bound(secure_cfg)))
    assert max(errors) > 0
    _assert_same_metrics(tmp_path / "plain", tmp_path / "secure")
    for name in sorted(p.name for p in (tmp_path / "plain" / "assignments").iterdir()):
        plain_text = (tmp_path / "plain" / "assignments" / name).read_text()
        assert (tmp_path / "secure" / "assignments" / name).read_text() == plain_text
    log_text = (tmp_path / "secure" / "log.txt").read_text()
    assert "IN THE CLEAR: each domain expert" in log_text


# FedIT and FedAMoLE have their own tests above
OTHERS = sorted(
    n for n, s in registry().items() if s.secure_kinds and n not in ("fedit", "fedamole")
)


@pytest.mark.parametrize("name", OTHERS)
def test_other_registered_algorithms_equal_plain_within_quantization(smoke, tmp_path, name):
    """Every algorithm that registers secure kinds runs with SecAgg+ and gives the plain run's
    metrics (its server state is the plain one's within 2c/Q per entry of the summed kinds)."""
    cfg = smoke.replace(**{**ONE_ROUND, "federation.algorithm": name})
    _serve(cfg, tmp_path / "plain")
    result = _serve(cfg.replace(**SECURE), tmp_path / "secure")
    assert result.failures == 0
    _assert_same_metrics(tmp_path / "plain", tmp_path / "secure")
    assert "SecAgg+ mean of 3 clients" in (tmp_path / "secure" / "log.txt").read_text()


def test_killed_secure_run_resumes_exactly(smoke, tmp_path):
    """The rounding noise is seeded per (run.seed, round, client), so a SecAgg+ run killed in
    round 2 and resumed (new node ids, new key pairs and masks) equals the uninterrupted one,
    bit for bit, whatever state numpy's global generator (which Flower rounds with) is in."""
    cfg = smoke.replace(**SECURE, **{"federation.algorithm": "fedit"})
    saved = np.random.get_state()
    try:
        np.random.seed(1)
        _serve(cfg, tmp_path / "whole")
        np.random.seed(2)

        def killed_in_round_2(rnd):
            if rnd == 2:
                raise KeyboardInterrupt("simulated kill")

        state_dir = tmp_path / "r" / "checkpoints" / "clients"
        with pytest.raises(KeyboardInterrupt):
            _serve(cfg, tmp_path / "r", state_dir=state_dir, on_round=killed_in_round_2)
        _serve(cfg, tmp_path / "r", FakeGrid(3, base=5000), resume=True, state_dir=state_dir)
    finally:
        np.random.set_state(saved)
    a = load_checkpoint(tmp_path / "whole" / "checkpoints")["server"]["global"]
    b = load_checkpoint(tmp_path / "r" / "checkpoints")["server"]["global"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [
        (r["round"], r["client"], r["metric"], r["value"])
        for r in result_records(tmp_path / "whole")
    ] == [
        (r["round"], r["client"], r["metric"], r["value"]) for r in result_records(tmp_path / "r")
    ]


def test_server_refuses_fedamole_unless_its_experts_may_travel_in_the_clear(smoke, tmp_path):
    with pytest.raises(ConfigError, match="subtract its own update") as refused:
        _serve(smoke.replace(**SECURE), tmp_path / "r")
    assert "flower.secaggplus.experts_in_clear = true" in str(refused.value)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ray_simulation_with_secagg_gives_the_plain_metrics(repo, fedit_runs, tmp_path):
    """`fedamole run ... flower.secagg=secaggplus --engine flower`: Flower's simulation runtime
    (Ray actors, its own node state) carries the protocol, and the metrics equal the plain run's
    (scores exactly, losses within 1e-5 relative, which also absorbs the actors' torch threads)."""
    _, plain, _, _ = fedit_runs
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    overrides = [f"{k}={v}" for k, v in {**ONE_ROUND, **SECURE}.items()]
    cmd = [sys.executable, "-m", "fedamole", "run", str(repo / "configs" / "smoke.toml")]
    cmd += [*overrides, "--engine", "flower", "--run-dir", str(tmp_path / "sim")]
    # a guard against a hung Ray start, not a speed limit
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_metrics(plain, tmp_path / "sim")
    protocol = [
        r for r in read_jsonl(tmp_path / "sim" / "wire.jsonl") if "secagg_up_serialized" in r
    ]
    assert sorted(r["client"] for r in protocol) == [0, 1, 2]
    assert "SecAgg+ mean of 3 clients" in (tmp_path / "sim" / "log.txt").read_text()
