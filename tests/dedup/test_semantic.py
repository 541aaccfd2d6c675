"""SemDeDup on embeddings: planted near-copies removed, distinct points kept."""

import numpy as np

from medscale.dedup.semantic import cluster_duplicates, normalize, semantic_reduce


def test_planted_copies_removed():
    rng = np.random.default_rng(0)
    base = normalize(rng.normal(size=(200, 32)))
    copies = normalize(base[:50] + 0.01 * rng.normal(size=(50, 32)))
    exemplar, distance = semantic_reduce(np.concatenate([base, copies]), eps=0.01, clusters=8)
    kept = exemplar == np.arange(250)
    assert kept[:200].sum() + kept[200:].sum() == 200  # one of each planted pair, all distinct points
    for i in range(50):
        assert not (kept[i] and kept[200 + i])
    assert (distance[~kept] < 0.01).all()


def test_cluster_walk_keeps_the_farthest_first():
    x = normalize(np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]]))
    centroid = normalize(np.array([[1.0, -0.2]]))[0]
    exemplar, _ = cluster_duplicates(x, centroid, eps=0.01)
    # the pair 0/1: member 1 is farther from the centroid, so it is visited first and kept
    assert exemplar.tolist() == [1, 1, 2]
