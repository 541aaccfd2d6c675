"""Near-duplicate pairs among 64-bit hashes: bit-sampling LSH tables, every candidate verified by exact Hamming.

Each table keys every hash by `bits` randomly chosen bit positions; two hashes at Hamming distance d share a key
with probability C(64-d, bits) / C(64, bits). Enough tables make the recall of pairs at distance <= k reach the
requested target, while unrelated hashes rarely collide. Tables are independent, so each is one Ray task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from medscale.hashing.hashes import HASH_NAMES

HASH_BITS = 64


def table_recall(distance: int, bits: int) -> float:
    """Probability that one table puts two hashes `distance` bits apart in the same bucket."""
    if distance + bits > HASH_BITS:
        return 0.0
    return math.comb(HASH_BITS - distance, bits) / math.comb(HASH_BITS, bits)


@dataclass(frozen=True)
class LshPlan:
    """How many tables of how many sampled bits, for `threshold` and a target recall."""

    threshold: int
    bits: int
    tables: int
    seed: int = 0

    @property
    def recall(self) -> float:
        """Expected recall of a pair exactly `threshold` apart (closer pairs do better)."""
        return 1.0 - (1.0 - table_recall(self.threshold, self.bits)) ** self.tables


def plan_lsh(n: int, threshold: int, recall: float = 0.995, bits: int = 0, tables: int = 0, seed: int = 0) -> LshPlan:
    """Bits per table ~ log2(n) (about n unrelated candidates per table), then enough tables for `recall`."""
    if not 0 <= threshold < HASH_BITS // 2:
        raise ValueError(f"threshold must be in 0..{HASH_BITS // 2 - 1}, got {threshold}")
    if not 0.0 < recall < 1.0:
        raise ValueError(f"recall must be in (0, 1), got {recall}")
    bits = bits or int(min(HASH_BITS - threshold, max(8, math.ceil(math.log2(max(n, 2))))))
    p = table_recall(threshold, bits)
    if p <= 0.0:
        raise ValueError(f"{bits} sampled bits can never match hashes {threshold} bits apart; use fewer bits")
    tables = tables or max(1, math.ceil(math.log(1.0 - recall) / math.log(1.0 - p))) if p < 1.0 else 1
    return LshPlan(threshold, bits, tables, seed)


def table_positions(plan: LshPlan, table: int) -> np.ndarray:
    """The sorted bit positions table `table` of `plan` samples (the same for every run with the same seed)."""
    rng = np.random.default_rng([plan.seed, table])
    return np.sort(rng.choice(HASH_BITS, size=plan.bits, replace=False)).astype(np.uint64)


def bucket_keys(hashes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Gather the sampled bits of each hash into a compact uint64 key."""
    key = np.zeros(len(hashes), np.uint64)
    for out_bit, pos in enumerate(positions):
        key |= ((hashes >> pos) & np.uint64(1)) << np.uint64(out_bit)
    return key


def table_pairs(hashes: np.ndarray, plan: LshPlan, table: int, groups: Optional[np.ndarray] = None,
                max_pairs: int = 1 << 24) -> np.ndarray:
    """Verified pairs of one table: `[P, 3]` int64 rows (i, j, distance) with i < j and distance <= threshold.

    `hashes: [N]` uint64 (distinct values are best: equal hashes are trivially duplicates). With `groups: [N]`
    only pairs whose members are in different groups are returned (e.g. corpus vs evaluation set).
    """
    keys = bucket_keys(hashes, table_positions(plan, table))
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    found = []
    total = 0
    # pairs at offset d inside each run of equal keys; stop once no run is longer than d
    alive = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])  # positions whose successor is in the same bucket
    d = 1
    while len(alive):
        i, j = order[alive], order[alive + d]
        dist = np.bitwise_count(hashes[i] ^ hashes[j])
        ok = dist <= plan.threshold
        if groups is not None:
            ok &= groups[i] != groups[j]
        if ok.any():
            a, b = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
            found.append(np.stack([a, b, dist[ok].astype(np.int64)], axis=1))
            total += len(a)
        d += 1
        nxt = alive + d
        alive = alive[nxt < len(keys)]
        alive = alive[sorted_keys[alive + d] == sorted_keys[alive]]
        if total > max_pairs:
            raise MemoryError(f"LSH table {table} produced over {max_pairs} pairs: lower the threshold")
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def merge_pairs(parts: list) -> np.ndarray:
    """Union of the pairs of several tables, each pair once."""
    pairs = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    if not len(pairs):
        return pairs
    code = pairs[:, 0] * (int(pairs[:, 1].max()) + 1) + pairs[:, 1]
    _, first = np.unique(code, return_index=True)
    return pairs[np.sort(first)]


def near_pairs(hashes: np.ndarray, threshold: int, recall: float = 0.995, groups: Optional[np.ndarray] = None,
               seed: int = 0) -> Tuple[np.ndarray, LshPlan]:
    """All tables in this process: (pairs `[P, 3]`, the plan used)."""
    plan = plan_lsh(len(hashes), threshold, recall, seed=seed)
    return merge_pairs([table_pairs(hashes, plan, t, groups) for t in range(plan.tables)]), plan


def brute_force_pairs(hashes: np.ndarray, threshold: int, block: int = 2048) -> np.ndarray:
    """Exact all-pairs search (the baseline, and the ground truth in tests): `[P, 3]` (i, j, distance), i < j."""
    found = []
    for s in range(0, len(hashes), block):
        a = hashes[s:s + block]
        dist = np.bitwise_count(a[:, None] ^ hashes[None, s:])  # [block, N - s]
        i, j = np.nonzero(dist <= threshold)
        keep = j > i
        i, j = i[keep], j[keep]
        found.append(np.stack([i + s, j + s, dist[i, j].astype(np.int64)], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def verified(pairs: np.ndarray, extra: np.ndarray, limit: int) -> np.ndarray:
    """Keep the pairs whose summed Hamming distance over the columns of `extra: [N, m]` uint64 is <= limit."""
    if not len(pairs) or extra.shape[1] == 0:
        return pairs
    dist = np.bitwise_count(extra[pairs[:, 0]] ^ extra[pairs[:, 1]]).sum(axis=1)
    return pairs[dist <= limit]


def parse_verify(spec: str) -> Tuple[Tuple[str, ...], int]:
    """`"dhash+ahash<=16"` -> (("dhash", "ahash"), 16): a pair also needs the summed distance of these hashes."""
    try:
        left, bound = spec.replace(" ", "").split("<=")
        hashes, limit = tuple(left.split("+")), int(bound)
    except ValueError:
        raise ValueError(f"verify rule {spec!r} must look like 'dhash+ahash<=16'") from None
    unknown = [h for h in hashes if h not in HASH_NAMES]
    if unknown or limit < 0:
        raise ValueError(f"verify rule {spec!r}: hashes must be among {', '.join(HASH_NAMES)} and the bound >= 0")
    return hashes, limit
