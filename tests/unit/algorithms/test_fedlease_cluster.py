"""FedLEASE's clustering (docs/algorithm.md#fedlease): the B-cosine distance, average linkage and
the silhouette against hand computations, scipy's average linkage on random matrices, and planted
groups of B matrices recovered with the planted number of clusters."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from fedamole.algorithms.fedlease_cluster import (
    average_linkage,
    b_distances,
    choose_clusters,
    rand_index,
    silhouette,
)

# a, b close; c, d close; b nearer to c, d than a is
HAND = torch.tensor(
    [
        [0.0, 0.1, 0.9, 0.8],
        [0.1, 0.0, 0.7, 0.6],
        [0.9, 0.7, 0.0, 0.2],
        [0.8, 0.6, 0.2, 0.0],
    ],
    dtype=torch.float64,
)


def _partition(labels):
    return sorted(sorted(i for i, x in enumerate(labels) if x == c) for c in set(labels))


def test_b_distance_by_hand():
    def state(b_q, b_v):
        return {
            "lora_A:q": torch.ones(1, 2),  # A is ignored
            "lora_B:q": torch.tensor(b_q),
            "lora_B:v": torch.tensor(b_v),
        }

    states = [
        state([[1.0], [0.0]], [[1.0], [1.0]]),
        state([[0.0], [2.0]], [[1.0], [0.0]]),
        state([[0.0], [0.0]], [[3.0], [3.0]]),  # a zero B: cosine 0 with everything
    ]
    d = b_distances(states)
    # module q: cos(0,1) = 0, cos(0,2) = cos(1,2) = 0 (zero); module v: cos(0,1) = 1/sqrt(2),
    # cos(0,2) = 1, cos(1,2) = 1/sqrt(2)
    expected = torch.tensor(
        [
            [0.0, (1 + 1 - 1 / math.sqrt(2)) / 2, (1 + 0) / 2],
            [(1 + 1 - 1 / math.sqrt(2)) / 2, 0.0, (1 + 1 - 1 / math.sqrt(2)) / 2],
            [(1 + 0) / 2, (1 + 1 - 1 / math.sqrt(2)) / 2, 0.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(d, expected)
    assert torch.equal(d, d.T)


def test_average_linkage_and_silhouette_by_hand():
    assert average_linkage(HAND, 4) == [0, 1, 2, 3]
    assert average_linkage(HAND, 3) == [0, 0, 1, 2]  # 0.1 is the smallest distance
    assert average_linkage(HAND, 2) == [0, 0, 1, 1]  # then 0.2 (c, d)
    assert average_linkage(HAND, 1) == [0, 0, 0, 0]
    # k = 2: a_i within, b_i the mean to the other pair
    s2 = [(0.85 - 0.1) / 0.85, (0.65 - 0.1) / 0.65, (0.8 - 0.2) / 0.8, (0.7 - 0.2) / 0.7]
    assert silhouette(HAND, [0, 0, 1, 1]) == pytest.approx(sum(s2) / 4)
    # k = 3: c and d are singletons (0); a's nearest other cluster is {d} (0.8), b's {d} (0.6)
    s3 = [(0.8 - 0.1) / 0.8, (0.6 - 0.1) / 0.6, 0.0, 0.0]
    assert silhouette(HAND, [0, 0, 1, 2]) == pytest.approx(sum(s3) / 4)
    labels, scores = choose_clusters(HAND, 3)
    assert labels == [0, 0, 1, 1]
    assert scores == pytest.approx({2: sum(s2) / 4, 3: sum(s3) / 4})


def test_average_linkage_is_not_single_or_complete_linkage():
    # {0, 1} at 0.1; 2 is 0.3 from 1 but 1.0 from 0 (average 0.65); 3 is 0.5 from both (0.5):
    # single linkage would join 2 (0.3), complete linkage 3 (0.5 < 1.0), average 3 (0.5 < 0.65)
    # and 2 vs 3 at 0.7
    d = torch.tensor(
        [
            [0.0, 0.1, 1.0, 0.5],
            [0.1, 0.0, 0.3, 0.5],
            [1.0, 0.3, 0.0, 0.7],
            [0.5, 0.5, 0.7, 0.0],
        ],
        dtype=torch.float64,
    )
    assert average_linkage(d, 2) == [0, 0, 1, 0]
    d[0, 3] = d[3, 0] = d[1, 3] = d[3, 1] = 0.66  # now 2 (0.65) joins first
    assert average_linkage(d, 2) == [0, 0, 0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_average_linkage_equals_scipy(seed):
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    d = torch.cdist(points, points)
    tree = linkage(squareform(d.numpy(), checks=False), method="average")
    for k in range(1, 10):
        ours = average_linkage(d, k)
        theirs = fcluster(tree, k, criterion="maxclust").tolist()
        assert _partition(ours) == _partition(theirs), k


@pytest.mark.parametrize("planted", [2, 3, 4])
def test_planted_groups_of_b_are_recovered_with_their_number(planted):
    gen = torch.Generator().manual_seed(planted)
    centers = [
        {m: torch.randn(16, 4, generator=gen) for m in ("lora_B:q", "lora_B:v")}
        for _ in range(planted)
    ]
    truth = [i % planted for i in range(8)]
    states = [
        {m: c + 0.1 * torch.randn(c.shape, generator=gen) for m, c in centers[g].items()}
        for g in truth
    ]
    labels, scores = choose_clusters(b_distances(states), 6)
    assert _partition(labels) == _partition(truth)
    assert max(scores, key=scores.get) == planted
    assert set(scores) == {2, 3, 4, 5, 6}


def test_rand_index_by_hand():
    assert rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0  # the same partition, other names
    # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3): together/apart agree on (0,3) and (1,2) only
    assert rand_index([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(2 / 6)
    assert rand_index([0], [3]) == 1.0
    with pytest.raises(ValueError, match="labels"):
        rand_index([0, 1], [0])


def test_too_few_clients_make_one_cluster_and_bad_input_is_named():
    assert choose_clusters(HAND[:2, :2], 5) == ([0, 0], {})
    assert choose_clusters(HAND, 1) == ([0, 0, 0, 0], {})
    with pytest.raises(ValueError, match="clusters"):
        average_linkage(HAND, 5)
    with pytest.raises(ValueError, match="2 clusters"):
        silhouette(HAND, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="lora_B"):
        b_distances([{"lora_A:q": torch.ones(1, 1)}])
