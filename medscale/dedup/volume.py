"""Per-volume reduction: the Less-is-More greedy Hash-k walk (in slice order) and every-n-th slice."""

from __future__ import annotations

import functools
from typing import Callable, List, Optional, Tuple

import numpy as np


class VolumeReducer:
    """Streaming Less-is-More greedy for one volume: offer slices in anatomical order, learn whether each is kept.

    The paper's walk (take the first remaining slice as reference, drop every remaining slice within `threshold`,
    repeat) keeps exactly the slices that are farther than `threshold` from every earlier kept slice, and a dropped
    slice belongs to the first such reference; so it can run while slices stream past, holding only the kept hashes.
    """

    def __init__(self, threshold: int) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self._kept: List[int] = []  # hashes of references, in order
        self._ids: List[int] = []  # their positions in the offered order

    def offer(self, value: int, position: int) -> Tuple[Optional[int], int]:
        """(None, 0) when the slice is kept (it becomes a reference), else (reference position, distance)."""
        if self._kept:
            dist = np.bitwise_count(np.array(self._kept, np.uint64) ^ np.uint64(value))
            near = np.flatnonzero(dist <= self.threshold)
            if len(near):
                return self._ids[near[0]], int(dist[near[0]])
        self._kept.append(int(value))
        self._ids.append(position)
        return None, 0


def greedy_volume(hashes: np.ndarray, threshold: int) -> Tuple[np.ndarray, np.ndarray]:
    """`hashes: [M]` uint64 in slice order -> (exemplar index `[M]`, own index when kept; Hamming distance `[M]`)."""
    reducer = VolumeReducer(threshold)
    exemplar = np.arange(len(hashes))
    distance = np.zeros(len(hashes), np.int16)
    for i, h in enumerate(hashes):
        ref, dist = reducer.offer(int(h), i)
        if ref is not None:
            exemplar[i], distance[i] = ref, dist
    return exemplar, distance


def every_n(count: int, n: int) -> np.ndarray:
    """Exemplar index of each of `count` slices in order when keeping slices 0, n, 2n...: the kept one before it."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return (np.arange(count) // n) * n


SLICE_REDUCERS = {"hash-volume": VolumeReducer}  # `shard.reduce`: reducers the sharding service can be handed


def slice_reducer(name: str, threshold: int) -> Callable[[], VolumeReducer]:
    """A picklable factory of a fresh streaming reducer per volume, handed to `run_sharding` by the command line
    (so that `data` never imports `dedup`)."""
    if name not in SLICE_REDUCERS:
        raise ValueError(f"unknown sharding reducer {name!r}; choose one of {', '.join(SLICE_REDUCERS)}")
    return functools.partial(SLICE_REDUCERS[name], threshold)
