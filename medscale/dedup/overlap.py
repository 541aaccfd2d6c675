"""The same scan in two sources: volumes whose slices are (mostly) contained in another volume's.

A volume is the set of its slices' quantised dHashes: each slice gives `TABLES` tokens, the values of `BITS`
sampled bits of its 64-bit dHash in each table (the bit-sampling keys of `lsh.py`). Why this set:
- dHash compares neighbouring pixels, so another display window (a monotone intensity map) keeps most bits; a
  re-exported slice lands a few bits away, and a slice d bits away still shares a table's token with probability
  C(64 - d, BITS) / C(64, BITS) (0.69 at d = 1, 0.21 at d = 4 with 20 bits), so a copy keeps a large share of
  its tokens where exact 64-bit values would all differ;
- a set has no order (reversed slices) and a subset of slices (every second slice, a thicker resampling whose
  interpolated slices lie near their neighbours) is contained in the original: its containment
  |A & B| / |A| is high even where the Jaccard similarity |A & B| / |A | B| is low;
- unrelated volumes are tens of bits apart (the nearest slices of two different real volumes here: 11 bits or
  more), and 20-bit tokens of such slices coincide rarely: containment under 0.01 between the real volumes of
  the tests, against 0.33 or more for every planted copy.
Near-blank slices (fewer than 4 or more than 60 of 64 bits set) say nothing about which scan they come from and
give no tokens.

MinHash signatures of the token sets go into datasketch's `MinHashLSHEnsemble`, which answers containment
queries; every candidate is then checked on the exact token sets.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from medscale.dedup.lsh import LshPlan, bucket_keys, table_positions
from medscale.dedup.minhash import lean, signatures

TABLES, BITS = 16, 20
INFORMATIVE_BITS = (4, 60)  # popcount range of a dHash with something in it


def slice_tokens(hashes: np.ndarray, seed: int = 0) -> np.ndarray:
    """`[N, TABLES]` uint64 tokens of `hashes: [N]` (table number in the high half, its sampled bits in the low)."""
    plan = LshPlan(threshold=0, bits=BITS, tables=TABLES, seed=seed)
    keys = [(np.uint64(t) << np.uint64(32)) | bucket_keys(hashes, table_positions(plan, t)) for t in range(TABLES)]
    return np.stack(keys, axis=1) if len(hashes) else np.zeros((0, TABLES), np.uint64)


def informative(hashes: np.ndarray) -> np.ndarray:
    """Which slices carry tokens: not near-blank."""
    bits = np.bitwise_count(hashes)
    return (bits >= INFORMATIVE_BITS[0]) & (bits <= INFORMATIVE_BITS[1])


def volume_sets(hashes: np.ndarray, members: Sequence[np.ndarray], seed: int = 0) -> List[np.ndarray]:
    """Each volume's token set (sorted unique uint64) from the dHashes of its slices (`members`: indices)."""
    tokens = slice_tokens(hashes, seed)
    keep = informative(hashes)
    return [np.unique(tokens[m[keep[m]]]) for m in members]


def containment(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a| of two sorted unique token arrays (0 for an empty a)."""
    return len(np.intersect1d(a, b, assume_unique=True)) / len(a) if len(a) else 0.0


def set_signatures(sets: Sequence[np.ndarray], num_perm: int = 128) -> np.ndarray:
    """MinHash signatures `[len(sets), num_perm]` of token sets (a task of the executor)."""
    return signatures(sets, num_perm)


def contained_pairs(sets: Sequence[np.ndarray], sigs: np.ndarray, threshold: float,
                    groups: Optional[np.ndarray] = None) -> np.ndarray:
    """`[P, 3]` float rows (q, x, containment of q in x) for every ordered pair of different sets with
    containment >= `threshold`: LSH Ensemble candidates from the signatures `sigs`, each checked on the exact sets.
    With `groups`, only pairs across groups (corpus against evaluation volumes)."""
    from datasketch import MinHashLSHEnsemble

    usable = [i for i, s in enumerate(sets) if len(s)]
    if len(usable) < 2:
        return np.zeros((0, 3))
    num_perm = sigs.shape[1]
    minhashes = [lean(sigs[i]) for i in usable]
    # the ensemble partitions by set size and tunes its bands to the threshold; a lower threshold than the exact
    # check's keeps its false negatives near the boundary out of the way
    ensemble = MinHashLSHEnsemble(threshold=0.8 * threshold, num_perm=num_perm, num_part=8)
    ensemble.index([(i, m, len(sets[i])) for i, m in zip(usable, minhashes)])
    found = []
    for q, m in zip(usable, minhashes):
        for x in ensemble.query(m, len(sets[q])):
            if x == q or (groups is not None and groups[x] == groups[q]):
                continue
            c = containment(sets[q], sets[x])
            if c >= threshold:
                found.append((q, x, c))
    return np.array(sorted(found), np.float64).reshape(-1, 3)


def overlap_decisions(hashes: np.ndarray, members: Sequence[np.ndarray], priority: np.ndarray, pairs: np.ndarray
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exemplar `[N]`, distance `[N]`, the kept volume each volume folds into `[V]`): volumes in `priority` order
    (more slices first, then the first key); a volume contained in one before it is a copy: each of its slices'
    exemplar is the nearest slice (Hamming distance of the dHashes) of the kept volume it folds into, the one
    that contains it if that is kept, else where that one folds."""
    n = len(hashes)
    exemplar, distance = np.arange(n), np.zeros(n, np.float32)
    target = np.arange(len(members))
    rank = np.empty(len(members), np.int64)
    rank[priority] = np.arange(len(members))
    containers: dict = {}
    for q, x, _ in pairs.astype(np.int64):
        if rank[x] < rank[q]:
            containers.setdefault(q, []).append(x)
    for v in priority:
        if v not in containers:
            continue
        kept = [x for x in containers[v] if target[x] == x]
        best = min(kept or containers[v], key=lambda x: rank[x])
        target[v] = target[best]
        mine, theirs = members[v], members[target[v]]
        nearest, distance[mine] = nearest_slices(hashes[mine], hashes[theirs])
        exemplar[mine] = theirs[nearest]
    return exemplar, distance, target


def nearest_slices(hashes: np.ndarray, others: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each of `hashes: [N]` uint64, (the index of its nearest in `others: [M]`, their Hamming distance)."""
    dist = np.bitwise_count(hashes[:, None] ^ others[None, :])
    return dist.argmin(axis=1), dist.min(axis=1)
