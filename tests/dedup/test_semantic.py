"""SemDeDup on embeddings: planted near-copies removed, distinct points kept."""

import numpy as np

from medscale.core.executor import LocalExecutor
from medscale.dedup.semantic import cluster_duplicates, normalize
from medscale.dedup.strategies import Corpus, create_strategy


def test_planted_copies_removed():
    rng = np.random.default_rng(0)
    base = normalize(rng.normal(size=(200, 32)))
    copies = normalize(base[:50] + 0.01 * rng.normal(size=(50, 32)))
    n = 250
    corpus = Corpus(keys=np.arange(n).astype(str).astype(object), hashes=np.zeros(n, np.uint64),
                    volumes=np.array([None] * n, dtype=object), slices=np.full(n, -1),
                    embeddings=np.concatenate([base, copies]))
    exemplar, distance = create_strategy("embedding", eps=0.01, clusters=8).reduce(corpus, LocalExecutor())
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


def test_a_misspelled_strategy_option_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="has no option 'threshhold'.*threshold"):
        create_strategy("hash-volume", threshhold=6)
