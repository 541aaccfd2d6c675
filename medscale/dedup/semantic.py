"""SemDeDup-style reduction on embeddings: spherical k-means, then a cosine threshold inside each cluster."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def spherical_kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """`x: [N, D]` unit rows -> (centroids `[k, D]` unit rows, assignment `[N]`), k-means++ seeded, cosine metric."""
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(n)]]
    best = np.maximum(1.0 - x @ centroids[0], 0.0).astype(np.float64)  # rounding can dip below 0
    for _ in range(1, k):  # k-means++ on cosine distance
        total = best.sum()
        pick = rng.choice(n, p=best / total) if total > 0 else rng.integers(n)
        centroids.append(x[pick])
        best = np.minimum(best, np.maximum(1.0 - x @ x[pick], 0.0))
    c = np.stack(centroids)
    assign = np.zeros(n, np.int64)
    for _ in range(iters):
        assign_new = np.argmax(x @ c.T, axis=1)
        if _ and np.array_equal(assign_new, assign):
            break
        assign = assign_new
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = c[empty]
        c = normalize(sums)
    return c, assign


def cluster_duplicates(x: np.ndarray, centroid: np.ndarray, eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """One cluster: `x: [M, D]` unit rows -> (exemplar index `[M]`, cosine distance to it `[M]`).

    Members are walked from the farthest from the centroid (SemDeDup keeps the least prototypical); a member whose
    cosine similarity to an earlier member exceeds 1 - eps is a duplicate of that member's exemplar.
    """
    m = len(x)
    order = np.argsort(x @ centroid, kind="stable")  # ascending similarity = farthest first
    xs = x[order]
    exemplar = np.arange(m)
    distance = np.zeros(m, np.float32)
    sim = xs @ xs.T
    sim[np.tril_indices(m)] = -np.inf  # only earlier members count
    best_prev = np.argmax(sim, axis=0)
    best_sim = sim[best_prev, np.arange(m)]
    ex_sorted = np.arange(m)
    for j in range(m):
        if best_sim[j] > 1.0 - eps:
            ex_sorted[j] = ex_sorted[best_prev[j]]
    exemplar[order] = order[ex_sorted]
    distance[order] = 1.0 - np.einsum("ij,ij->i", xs, xs[ex_sorted])
    return exemplar, distance
