"""FedLEASE (docs/algorithm.md#fedlease): the router's slot mapping and renormalized top-M
weights, the gated layer against the sum computed by hand, the server's clustering and
within-cluster means against hand computations, what travels, and a client round that trains only
its own cluster's expert and its router."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.fedlease import (
    initial_router,
    load_client_model,
    max_clusters,
    pack_experts,
    unpack_experts,
    within_cluster_means,
)
from fedamole.algorithms.fedlease_router import (
    expert_adapter,
    route,
    router_parameters,
    slot_experts,
)
from fedamole.algorithms.lora_common import lora_layers, lora_state
from fedamole.config import ConfigError
from fedamole.data import load_federated_data
from fedamole.federated.messages import ClientMessage

QA = "lora_A:model.layers.0.self_attn.q_proj"
QB = "lora_B:model.layers.0.self_attn.q_proj"


def test_slots_map_the_last_m_minus_1_to_the_own_expert():
    assert slot_experts(3, 1).tolist() == [0, 1, 2, 1, 1]
    assert slot_experts(2, 0).tolist() == [0, 1, 0]
    assert slot_experts(1, 0).tolist() == [0]


def test_route_is_renormalized_top_m_by_hand():
    # M = 2, own = 1: slots (0, 1, 1)
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 1.0, 3.0], [1.0, 0.0, 2.0]])
    e = [math.exp(x) for x in (2.0, 1.0)]
    expected = torch.tensor(
        [
            [e[0] / sum(e), e[1] / sum(e)],  # slots 0, 1: experts 0 and 1
            [0.0, 1.0],  # slots 2, 1: both the own expert
            [math.exp(1) / (math.exp(1) + math.exp(2)), math.exp(2) / (math.exp(1) + math.exp(2))],
        ]
    )
    torch.testing.assert_close(route(logits, own=1), expected)
    # M = 3, own = 0: slots (0, 1, 2, 0, 0); the top 3 of 5 are slots 4, 2, 1
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 3.0])
    w = torch.tensor([math.exp(3.0), math.exp(2.0), math.exp(1.0)])
    w = w / w.sum()
    torch.testing.assert_close(route(logits, own=0), torch.stack([w[0], w[2], w[1]]))
    assert route(torch.tensor([[0.7]]), own=0).tolist() == [[1.0]]  # M = 1


def _clustered(make_algo, clients=4):
    """A FedLEASE server after a warm-up round whose uploads plant clusters {0, 2} and {1, 3}."""
    algo, model, tokenizer = make_algo("fedlease", **{"federation.num_clients": clients})
    gen = torch.Generator().manual_seed(0)
    centers = [{k: torch.randn(v.shape, generator=gen) for k, v in algo.global_state.items()}]
    centers.append({k: torch.randn(v.shape, generator=gen) for k, v in algo.global_state.items()})
    uploads = {}
    for c in range(clients):
        up = {}
        for k, v in algo.global_state.items():
            if k.startswith("lora_A"):
                up[k] = torch.full_like(v, float(c + 1))
            else:
                up[k] = centers[c % 2][k] + 0.01 * torch.randn(v.shape, generator=gen)
        uploads[c] = ClientMessage(1, c, up, {"num_examples": 1}, {})
    return algo, model, tokenizer, uploads


def test_the_server_clusters_once_and_averages_within_clusters_by_hand(make_algo):
    algo, _, _, uploads = _clustered(make_algo)
    assert max_clusters(algo.cfg) == 3  # min(N - 1, mole.max_experts_per_client) = min(3, 4)
    assert all(not m.tensors for m in algo.configure_round(1).values())  # the warm-up
    algo.categories = [frozenset(s) for s in ("a", "b", "a", "b")]  # the planted groups
    summary = algo.aggregate(1, uploads)
    assert algo.clusters == [0, 1, 0, 1]
    assert set(algo.silhouettes) == {2, 3}
    assert summary.info["metrics"] == {
        "fedlease/clusters": 2.0,
        "fedlease/silhouette": algo.silhouettes[2],
        "fedlease/rand_index": 1.0,
    }
    algo.categories = [frozenset(s) for s in ("a", "a", "b", "b")]  # 2 of 6 pairs agree
    assert algo.clustering_metrics()["fedlease/rand_index"] == pytest.approx(1 / 3)
    # expert k starts as its members' mean: A of client c is c + 1
    torch.testing.assert_close(algo.experts[0][QA], torch.full_like(algo.experts[0][QA], 2.0))
    torch.testing.assert_close(algo.experts[1][QA], torch.full_like(algo.experts[1][QA], 3.0))
    mean_b = (uploads[1].tensors[QB] + uploads[3].tensors[QB]) / 2
    torch.testing.assert_close(algo.experts[1][QB], mean_b)
    assert torch.equal(algo.routers[0][f"router:{QA[7:]}"], algo.routers[1][f"router:{QA[7:]}"])
    sent = algo.configure_round(2)
    for c, msg in sent.items():
        assert msg.config["cluster"] == algo.clusters[c] and msg.config["num_experts"] == 2
        assert set(msg.tensors) == set(pack_experts(algo.experts)) | set(algo.routers[c % 2])
    # round 2: client 3 is absent; client c uploads its expert as 10 (c + 1), its router c + 1
    replies = {}
    for c in (0, 1, 2):
        own = algo.experts[c % 2]
        tensors = {k: torch.full_like(v, 10.0 * (c + 1)) for k, v in own.items()}
        tensors |= {k: torch.full_like(v, c + 1.0) for k, v in algo.routers[c % 2].items()}
        replies[c] = ClientMessage(2, c, tensors, {"num_examples": 1}, {})
    assert algo.aggregate(2, replies).info == {}
    assert algo.clusters == [0, 1, 0, 1]  # never clustered again
    torch.testing.assert_close(algo.experts[0][QB], torch.full_like(algo.experts[0][QB], 20.0))
    torch.testing.assert_close(algo.experts[1][QA], torch.full_like(algo.experts[1][QA], 20.0))
    router = algo.routers[0][f"router:{QA[7:]}"]
    torch.testing.assert_close(router, torch.full_like(router, 2.0))  # (1 + 3) / 2
    torch.testing.assert_close(algo.routers[1][f"router:{QA[7:]}"], torch.full_like(router, 2.0))
    # round 3: nobody of cluster 1 uploads: it keeps its expert and router
    kept = {k: v.clone() for k, v in algo.experts[1].items()}
    algo.aggregate(3, {0: replies[0]})
    assert all(torch.equal(algo.experts[1][k], v) for k, v in kept.items())
    # a resumed server equals this one
    twin, _, _, _ = _clustered(make_algo)
    twin.load_state_dict(algo.state_dict())
    assert twin.clusters == algo.clusters and twin.silhouettes == algo.silhouettes
    assert all(torch.equal(twin.experts[1][k], v) for k, v in kept.items())


def test_within_cluster_means_by_hand():
    experts = [{"a": torch.tensor([0.0])}, {"a": torch.tensor([5.0])}, {"a": torch.tensor([7.0])}]
    routers = [{"r": torch.tensor([0.0])}, {"r": torch.tensor([1.0])}, {"r": torch.tensor([9.0])}]
    uploads = {
        0: {"a": torch.tensor([1.0]), "r": torch.tensor([2.0])},
        1: {"a": torch.tensor([3.0]), "r": torch.tensor([4.0])},
        3: {"a": torch.tensor([6.0]), "r": torch.tensor([10.0])},
    }
    new_e, new_r = within_cluster_means(experts, routers, [0, 1, 0, 0], uploads)
    assert [e["a"].item() for e in new_e] == [(1 + 6) / 2, 3.0, 7.0]  # cluster 2: none, kept
    assert [r["r"].item() for r in new_r] == [(2 + 10) / 2, 4.0, 9.0]


def test_a_client_absent_at_the_clustering_joins_the_largest_cluster(make_algo):
    algo, _, _, uploads = _clustered(make_algo)
    algo.aggregate(1, {c: uploads[c] for c in (0, 1, 2)})
    assert algo.clusters == [0, 1, 0, 0]  # K_max = min(3, 3 uploads - 1) = 2


def test_the_routed_layer_equals_the_gated_sum_by_hand(make_algo):
    algo, model, _ = make_algo("fedlease")
    model.eval()
    gen = torch.Generator().manual_seed(3)
    m, own = 2, 1
    state = {
        "lora" if k == 0 else f"lora_expert{k}": {
            key: torch.randn(v.shape, generator=gen)
            for key, v in lora_state(model, expert_adapter(k)).items()
        }
        for k in range(m)
    }
    in_features = {n: layer.in_features for n, layer in lora_layers(model).items()}
    state |= {"router": initial_router(in_features, m, gen), "num_experts": m, "cluster": own}
    load_client_model(model, state, len(algo.adapters))
    name, layer = sorted(lora_layers(model).items())[0]
    x = torch.randn(2, 5, layer.in_features, generator=gen)
    with torch.no_grad():
        got = layer(x)
        g = route(x @ state["router"][f"router:{name}"].T, own)  # (2, 5, M)
        expected = layer.base_layer(x)
        for k in range(m):
            a, b = layer.lora_A[expert_adapter(k)].weight, layer.lora_B[expert_adapter(k)].weight
            expected = expected + g[..., k : k + 1] * (x @ a.T @ b.T) * layer.scaling["default"]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        load_client_model(model, {**state, "num_experts": 0}, len(algo.adapters))  # warm-up
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        plain = layer.base_layer(x) + (x @ a.T @ b.T) * layer.scaling["default"]
        torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-6)


def test_a_client_trains_only_its_own_expert_and_its_router(make_algo):
    algo, model, tokenizer, uploads = _clustered(make_algo, clients=3)
    algo.aggregate(1, uploads)
    assert algo.clusters == [0, 1, 0]
    ctx = ClientContext(1, load_federated_data(algo.cfg).clients[1], model, tokenizer)
    msg = algo.configure_round(2)[1]
    train_only = {**msg.config, "eval_personalized": False, "eval_received": False}
    reply = algo.local_update(2, dataclasses.replace(msg, config=train_only), ctx)
    sent = unpack_experts(msg.tensors, 2)
    assert all(torch.equal(ctx.state["lora"][k], v) for k, v in sent[0].items())  # frozen
    assert not torch.equal(ctx.state["lora_expert1"][QB], sent[1][QB])  # trained
    router = {k: v for k, v in msg.tensors.items() if k.startswith("router:")}
    assert all(not torch.equal(ctx.state["router"][k], v) for k, v in router.items())
    assert set(reply.tensors) == set(sent[1]) | set(router)
    assert all(torch.equal(reply.tensors[k], ctx.state["lora_expert1"][k]) for k in sent[1])
    assert len(router_parameters(model)) == len(lora_layers(model))


def test_the_warm_up_must_end_before_the_last_round(smoke):
    with pytest.raises(ConfigError, match="warmup_rounds"):
        smoke.replace(**{"federation.algorithm": "fedlease", "baselines.fedlease.warmup_rounds": 2})
    with pytest.raises(ConfigError, match="max_clusters"):
        smoke.replace(**{"federation.algorithm": "fedlease", "baselines.fedlease.max_clusters": 3})
    assert smoke.replace(**{"baselines.fedlease.warmup_rounds": 5}).federation.rounds == 2
