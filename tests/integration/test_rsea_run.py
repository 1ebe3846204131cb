"""RSEA in runs: diagnostics logged every round, the received-projection statistic, the oracle."""

from __future__ import annotations

import re

import pytest
import torch

from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.fedamole import MIN_EMBEDDING_EXAMPLES
from fedamole.algorithms.runtime import build_runtime
from fedamole.data import load_federated_data
from fedamole.engines.embedded import run_embedded
from fedamole.federated.messages import unpack_stats
from fedamole.mole import embedding_stats, mole_modules, set_mole_state
from fedamole.training import model_inputs
from tests.conftest import result_records

PAIRED = {
    "federation.num_clients": 4,
    "partition.tasks_per_client": 1,
    "partition.clients_per_task": 2,
    "federation.rounds": 3,
}


def _server(path):
    return {
        (r["round"], r["metric"]): r["value"]
        for r in result_records(path)
        if r["split"] == "server" and r["metric"].startswith("rsea/")
    }


def test_fedamole_logs_rsea_diagnostics_every_round(smoke, tmp_path):
    cfg = smoke.replace(**PAIRED)
    run_embedded(cfg, tmp_path / "run", progress=False)
    found = _server(tmp_path / "run")
    keys = {"rsea/group_purity", "rsea/group_purity_chance"}
    assert {m for (rnd, m) in found if rnd == 0} == keys  # the initial assignment
    for rnd in (1, 2):  # each RSEA solve
        assert {m for (r, m) in found if r == rnd} == keys | {
            "rsea/affinity_spread",
            "rsea/retention",
        }
    assert found[(0, "rsea/group_purity_chance")] == pytest.approx(2 / 6)  # 2 related of 6 pairs
    assert all(0 <= v <= 1 for v in found.values())
    assert (tmp_path / "run" / "log.txt").read_text().count("rsea/retention") == 2


def test_oracle_keeps_every_expert_within_a_related_pair(smoke, tmp_path):
    cfg = smoke.replace(**PAIRED, **{"federation.assignment": "oracle"})
    run_embedded(cfg, tmp_path / "run", progress=False)
    found = _server(tmp_path / "run")
    assert found[(0, "rsea/group_purity")] == 1.0
    assert found[(1, "rsea/retention")] == 1.0 and found[(2, "rsea/group_purity")] == 1.0


@pytest.mark.parametrize("mode", ["local", "received"])
def test_uploaded_token_embedding_uses_the_chosen_projection(smoke, mode):
    """``received``: the statistic equals the one computed with the message's token projection,
    not with the one local training produced (which differs); ``local``: the reverse."""
    cfg, algo, model, ctx, reply = _client_round_1(smoke, "mole.rsea_token_proj", mode)
    uploaded = {name: token for name, (token, _) in unpack_stats(reply.tensors).items()}
    received = {
        name: st.token_proj for name, st in algo._client_modules(0).items()
    }  # the message's projections (the server state has not changed yet)
    trained = {
        name: m.token_proj.weight.detach().clone() for name, m in mole_modules(model).items()
    }
    assert any(not torch.equal(received[n], trained[n]) for n in received)  # training moved it
    batches = _embedding_batches(ctx, cfg)
    with_received = embedding_stats(model, batches, token_weights=received)
    with_trained = embedding_stats(model, batches)
    expect, other = (
        (with_received, with_trained) if mode == "received" else (with_trained, with_received)
    )
    for name, token in uploaded.items():
        torch.testing.assert_close(token, expect[name].token, rtol=1e-4, atol=1e-5)
    assert any(
        not torch.allclose(uploaded[n], other[n].token, rtol=1e-4, atol=1e-5) for n in uploaded
    )


def test_received_stats_are_the_received_models(smoke):
    """``rsea_stats = "received"``: every uploaded statistic (token and expert embeddings) is the
    one of the model as the client received it, before local training changed it."""
    cfg, algo, model, ctx, reply = _client_round_1(smoke, "mole.rsea_stats", "received")
    uploaded = unpack_stats(reply.tensors)
    batches = _embedding_batches(ctx, cfg)
    trained = embedding_stats(model, batches)
    set_mole_state(model, algo._client_modules(0))  # the message's state: not yet aggregated
    received = embedding_stats(model, batches)
    for name, (token, experts) in uploaded.items():
        torch.testing.assert_close(token, received[name].token, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(experts, received[name].experts, rtol=1e-4, atol=1e-5)
    assert any(
        not torch.allclose(uploaded[n][1], trained[n].experts, rtol=1e-4, atol=1e-5)
        for n in uploaded
    )  # training moved the expert embeddings too


@pytest.mark.parametrize(("ratio", "warned"), [(0.05, True), (0.0, True), (0.3, False)])
def test_a_small_embedding_set_is_warned_about_once(smoke, caplog, ratio, warned):
    """Under ``MIN_EMBEDDING_EXAMPLES`` the client says how many examples its statistics come
    from and which field to raise, once per run (smoke's 80 examples per client: 0.05 gives 2)."""
    cfg, algo, _, ctx, _ = _client_round_1(smoke, "data.embedding_ratio", ratio)
    size = len(_embedding_rows(ctx, cfg))
    assert (size < MIN_EMBEDDING_EXAMPLES) == warned
    algo.local_update(2, algo.configure_round(2)[0], ctx)  # a second statistic: no second line
    lines = [r.getMessage() for r in caplog.records if "embedding example" in r.getMessage()]
    if not warned:
        assert lines == []
        return
    assert len(lines) == 1 and lines[0].startswith(f"client 0: RSEA statistics from {size} ")
    assert f"data.embedding_ratio = {ratio:g}" in lines[0]
    assert "raise data.embedding_ratio" in lines[0]
    assert ("one training example stands in" in lines[0]) == (size == 0)


def _client_round_1(smoke, key, value):
    """Client 0's round 1 (lr 1e-2, so training moves the weights) with ``key = value``:
    ``(cfg, algo, model, ctx, reply)``; the server state is still the one it sent."""
    cfg = smoke.replace(**{key: value, "federation.rounds": 3, "train.lr": 1e-2})
    runtime = build_runtime(cfg)
    algo, model = runtime.algo, runtime.model
    data = load_federated_data(cfg)
    algo.setup(model)
    msg = algo.configure_round(1)[0]
    ctx = ClientContext(0, data.clients[0], model, runtime.tokenizer)
    return cfg, algo, model, ctx, algo.local_update(1, msg, ctx)


def _embedding_batches(ctx, cfg):
    """The client's embedding set, one unpadded row per batch."""
    return [
        model_inputs(
            {k: torch.tensor([v]) for k, v in enc.items() if k != "labels"}
            | {"attention_mask": torch.ones(1, len(enc["input_ids"]), dtype=torch.long)},
            ctx.device,
        )
        for enc in _embedding_rows(ctx, cfg)
    ]


def _embedding_rows(ctx, cfg):
    from fedamole.data.collate import encode_train

    rows = [encode_train(x, ctx.tokenizer, cfg.model.max_length) for x in ctx.data.embedding]
    return [r for r in rows if r is not None]


def test_rsea_report_and_figure_from_runs(smoke, tmp_path):
    from typer.testing import CliRunner

    from fedamole.analysis.plots import plot
    from fedamole.cli import app

    for seed in (1, 2):
        for name, extra in (("paper", {}), ("static", {"federation.assignment": "static"})):
            cfg = smoke.replace(**PAIRED, **extra, **{"run.seed": seed})
            run_embedded(cfg, tmp_path / "sweep" / f"{name}{seed}", progress=False)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "sweep"), "--rsea"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "| FedAMoLE | " in text and "| FedAMoLE-R | " in text
    assert "Chance level of group purity" in text and "r1 0.333" in text
    # static: retention 1 in both RSEA rounds (none logged for the initial assignment)
    assert re.search(r"\| FedAMoLE-R \|.*\| - \| 1\.000 ± 0\.000 \| 1\.000 ± 0\.000 \|", text)
    assert "Paired by seed against FedAMoLE" in text and "/2 |" in text
    paths = plot("rsea", [tmp_path / "sweep"], tmp_path / "fig")
    assert {p.suffix for p in paths} == {".png", ".svg"}
    empty = CliRunner().invoke(app, ["report", str(tmp_path / "nothing"), "--rsea"])
    assert empty.exit_code == 2 and "error:" in empty.output
