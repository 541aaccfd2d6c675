"""Metric formulas (pure functions on numpy arrays), checked against hand-worked cases in tests.

Retrieval (the retrieval seed's definitions), per query with `R` the labels of its k nearest database items,
nearest first, and `y` its label:
- AP@k: walk R; at each hit at rank i (1-based) add hits_so_far / i; divide by the number of hits in R (0 if none).
- ACC@k: 1 if y is anywhere in R[:k] (ACC@1 is 1-NN accuracy).
- MMV@k: 1 if y is among the most frequent labels of R[:k], ties counting as correct.
AUC: the probability that a positive scores above a negative (ties count half), from ranks (Mann-Whitney);
macro one-vs-rest over classes for more than two. Intervals: a percentile bootstrap over test examples.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
from scipy.stats import rankdata


def average_precision_at_k(neighbour_labels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP@k per query. `neighbour_labels: [Q, k]` nearest first, `labels: [Q]` -> `[Q]`."""
    hits = neighbour_labels == labels[:, None]
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = np.cumsum(hits, axis=1) / ranks
    n_hits = hits.sum(axis=1)
    return np.where(n_hits > 0, (precision * hits).sum(axis=1) / np.maximum(n_hits, 1), 0.0)


def accuracy_at_k(neighbour_labels: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """ACC@k per query: 1.0 where the query's label is among its `k` nearest. `[Q, >=k], [Q]` -> `[Q]`."""
    return (neighbour_labels[:, :k] == labels[:, None]).any(axis=1).astype(np.float64)


def majority_vote_at_k(neighbour_labels: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """MMV@k per query: 1.0 where the query's label is among the (tied) most frequent of its `k` nearest."""
    top = neighbour_labels[:, :k]
    counts = (top[:, :, None] == top[:, None, :]).sum(axis=2)  # [Q, k]: how often each neighbour's label occurs
    own = (top == labels[:, None]).sum(axis=1)
    return (own == counts.max(axis=1)).astype(np.float64) * (own > 0)


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of `scores` for the boolean `positive` (NaN when one class is absent)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary AUC from `scores: [N]` or `[N, 2]` (the positive class's column), macro one-vs-rest AUC from
    `scores: [N, C]` (classes absent from `labels` are left out)."""
    if scores.ndim == 1:
        return binary_auc(scores, labels == 1)
    if scores.shape[1] == 2:
        return binary_auc(scores[:, 1], labels == 1)
    per_class = [binary_auc(scores[:, c], labels == c) for c in range(scores.shape[1]) if (labels == c).any()]
    return float(np.nanmean(per_class)) if per_class else float("nan")


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (1): 2 TP / (2 TP + FP + FN); 0 when there is no positive at all."""
    tp = float(((predicted == 1) & (labels == 1)).sum())
    wrong = float((predicted != labels).sum())
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def bootstrap_interval(values: Dict[str, np.ndarray], statistic: Callable[..., float], resamples: int,
                       seed: int) -> Tuple[float, float]:
    """95% percentile interval of `statistic(**values)` over `resamples` resamplings (with replacement) of the
    rows every array of `values` shares; (nan, nan) without resamples."""
    if resamples <= 0:
        return float("nan"), float("nan")
    n = len(next(iter(values.values())))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        stats.append(statistic(**{name: array[rows] for name, array in values.items()}))
    low, high = np.nanpercentile(np.asarray(stats, dtype=np.float64), [2.5, 97.5])
    return float(low), float(high)


def mean_interval(per_example: np.ndarray, resamples: int, seed: int) -> Tuple[float, float, float]:
    """(mean, low, high) of a per-example score with its 95% bootstrap interval (vectorised)."""
    per_example = np.asarray(per_example, dtype=np.float64)
    mean = float(per_example.mean()) if len(per_example) else float("nan")
    if resamples <= 0 or not len(per_example):
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 256):  # bounded memory: [256, N] indices at a time
        rows = rng.integers(0, len(per_example), (min(256, resamples - start), len(per_example)))
        means.append(per_example[rows].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return mean, float(low), float(high)
