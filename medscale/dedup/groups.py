"""Connected groups of near-duplicate pairs, each with one exemplar."""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def exemplars(n: int, pairs: np.ndarray, rank: np.ndarray | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """(exemplar `[n]`, group id `[n]`) for `pairs: [P, 2+]` (i, j, ...) over n items.

    Items joined by any chain of pairs form one group; its exemplar is the member with the lowest `rank`
    (default: the lowest index), so the choice is deterministic. A singleton is its own exemplar.
    """
    if len(pairs) == 0:
        return np.arange(n), np.arange(n)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    rank = np.arange(n) if rank is None else rank
    order = np.lexsort((rank, group))  # by group, then rank
    first = np.ones(n, bool)
    first[1:] = group[order][1:] != group[order][:-1]
    leader = np.empty(group.max() + 1, np.int64)
    leader[group[order][first]] = order[first]
    return leader[group], group


def star_exemplars(n: int, pairs: np.ndarray, rank: np.ndarray | None = None) -> np.ndarray:
    """Exemplar `[n]` by the greedy walk of Less is More, over the whole pair graph: in `rank` order, an item not
    yet claimed becomes an exemplar and claims its unclaimed direct neighbours. Every duplicate is then within
    the threshold of its own exemplar (connected groups can chain far-apart items together)."""
    exemplar = np.arange(n)
    if len(pairs) == 0:
        return exemplar
    rank = np.arange(n) if rank is None else rank
    ij = np.concatenate([pairs[:, :2], pairs[:, 1::-1][:, :2]])  # both directions
    order = np.lexsort((rank[ij[:, 1]], rank[ij[:, 0]]))
    ij = ij[order]
    claimed = np.zeros(n, bool)
    by_item = np.split(ij[:, 1], np.flatnonzero(np.diff(ij[:, 0])) + 1)
    heads = ij[np.r_[0, np.flatnonzero(np.diff(ij[:, 0])) + 1], 0]
    neighbours = dict(zip(heads.tolist(), by_item))
    for item in np.argsort(rank, kind="stable"):
        if claimed[item] or item not in neighbours:
            continue
        claimed[item] = True
        free = neighbours[item][~claimed[neighbours[item]]]
        claimed[free] = True
        exemplar[free] = item
    return exemplar


def connected_exemplars(n: int, pairs: np.ndarray, rank: np.ndarray | None = None) -> np.ndarray:
    """Exemplar `[n]` of connected groups (see `exemplars`)."""
    return exemplars(n, pairs, rank)[0]


GROUPINGS = {"star": star_exemplars, "connected": connected_exemplars}  # `dedup.groups`: pairs -> exemplars
