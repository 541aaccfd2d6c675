"""MinHash signatures of sets of integer tokens, and LSH bands over them.

A set is an array of uint64 tokens; each token is folded to 32 bits (`token32`) and fed to datasketch's MinHash
(scheme `affine32`, the identity as its hash function), which pre-mixes it with the MurmurHash3 finalizer and
applies `num_perm` affine permutations mod 2^32. `signatures` computes exactly those hash values for many sets at
once in numpy (tested equal to `datasketch.MinHash.update_batch`), so that a million sets take minutes, not hours;
`lean` turns a row into a `datasketch.LeanMinHash` for datasketch's indexes (in memory, Redis, Cassandra).

`band_pairs` is the banding of `datasketch.MinHashLSH` (b bands of r rows; two sets are candidates when one band
matches exactly) in numpy, one band per task: the same candidates, for corpora whose index does not fit in one
process's dictionaries.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from medscale.dedup.lsh import merge_pairs

SEED = 1  # datasketch's default
EMPTY = np.uint32(0xFFFFFFFF)  # every hash value of the empty set's signature
TOKEN_CHUNK = 1 << 18  # tokens permuted at once: [chunk, num_perm] uint32 = 128 MiB at 128 permutations


def token32(tokens: np.ndarray) -> np.ndarray:
    """uint64 tokens -> uint32 (splitmix64's finalizer, then the high half): what datasketch hashes."""
    z = np.asarray(tokens, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(32)).astype(np.uint32)


def _identity(value):
    return int(value)


def datasketch_minhash(tokens: np.ndarray, num_perm: int, seed: int = SEED):
    """The `datasketch.MinHash` of one set, built by datasketch itself (the reference `signatures` equals)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, scheme="affine32", hashfunc=_identity)
    m.update_batch(token32(np.unique(tokens)).tolist())
    return m


def permutations(num_perm: int, seed: int = SEED) -> Tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b), uint32 `[num_perm]` each."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.asarray(a, np.uint32), np.asarray(b, np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(sets: Sequence[np.ndarray], num_perm: int = 128, seed: int = SEED) -> np.ndarray:
    """`[len(sets), num_perm]` uint32: each set's datasketch MinHash hash values (an empty set gets 2^32 - 1
    everywhere, as datasketch's does)."""
    sizes = np.array([len(s) for s in sets], np.int64)
    flat = np.concatenate([np.asarray(s, np.uint64) for s in sets]) if len(sets) else np.zeros(0, np.uint64)
    return signatures_flat(flat, np.repeat(np.arange(len(sets)), sizes), len(sets), num_perm, seed)


def signatures_flat(tokens: np.ndarray, owner: np.ndarray, n_sets: int, num_perm: int = 128, seed: int = SEED
                    ) -> np.ndarray:
    """`signatures` of sets given as one array of tokens and the (non-decreasing) set each belongs to; a token may
    repeat within a set (a MinHash does not count repeats)."""
    a, b = permutations(num_perm, seed)
    out = np.full((n_sets, num_perm), EMPTY, np.uint32)
    if not len(tokens):
        return out
    flat = _fmix32(token32(tokens))
    with np.errstate(over="ignore"):
        for start in range(0, len(flat), TOKEN_CHUNK):
            part, who = flat[start:start + TOKEN_CHUNK], owner[start:start + TOKEN_CHUNK]
            permuted = a[:, None] * part[None, :]  # [num_perm, chunk] uint32: the wraparound is the modulo 2^32
            permuted += b[:, None]  # (this layout is 14x faster than [chunk, num_perm] here)
            cuts = np.r_[0, np.flatnonzero(np.diff(who)) + 1]
            rows = who[cuts]
            out[rows] = np.minimum(out[rows], np.minimum.reduceat(permuted, cuts, axis=1).T)
    return out


def lean(signature: np.ndarray, seed: int = SEED):
    """A `datasketch.LeanMinHash` holding `signature` (for datasketch's LSH indexes)."""
    from datasketch import LeanMinHash

    return LeanMinHash(seed=seed, hashvalues=signature, scheme="affine32")


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the fraction of equal hash values (row-wise for 2-D arrays)."""
    return (np.asarray(sig_a) == np.asarray(sig_b)).mean(axis=-1)


def lsh_params(threshold: float, num_perm: int) -> Tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH picks for `threshold` (equal weights of false positives and
    negatives)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def distinct_rows(sigs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(first `[U]`, inverse `[N]`) for signatures `[N, P]` (P >= 2): rows `first` stand for groups of equal rows,
    each by its lowest index, and row i equals `sigs[first[inverse[i]]]`.

    Rows are sorted by their first two hash values and equal neighbours merged (10x faster than `np.unique` on
    whole rows); two equal rows that a 64-bit collision keeps apart stay two groups, which the bands then pair."""
    key = np.ascontiguousarray(sigs[:, :2]).view(np.uint64).ravel()
    order = np.argsort(key, kind="stable")
    same = np.zeros(len(order), bool)  # same[k]: sorted row k equals sorted row k - 1
    near = np.flatnonzero(key[order[1:]] == key[order[:-1]]) + 1
    same[near] = (sigs[order[near]] == sigs[order[near - 1]]).all(axis=1)
    group = np.cumsum(~same) - 1
    inverse = np.empty(len(order), np.int64)
    inverse[order] = group
    return order[~same], inverse


def band_pairs(sigs: np.ndarray, band: int, rows: int, max_pairs: int = 1 << 24) -> np.ndarray:
    """Candidate pairs `[P, 2]` (i < j) of one band: sets whose `rows` hash values of band `band` are equal.

    Equal signatures are best collapsed first (they are copies; a bucket of k of them gives k^2/2 pairs)."""
    part = np.ascontiguousarray(sigs[:, band * rows:(band + 1) * rows])
    keys = part.view(np.dtype((np.void, part.dtype.itemsize * rows))).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1, len(keys)]
    sizes = np.diff(starts)
    if int((sizes * (sizes - 1) // 2).sum()) > max_pairs:
        raise MemoryError(f"MinHash band {band} produced over {max_pairs} candidate pairs: raise dedup.jaccard")
    found: List[np.ndarray] = []
    for s, e in zip(starts[:-1][sizes > 1], starts[1:][sizes > 1]):
        members = np.sort(order[s:e])
        i, j = np.triu_indices(len(members), 1)
        found.append(np.stack([members[i], members[j]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def merge_band_pairs(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The union of several bands' pairs `[P, 2]`, each once, sorted."""
    pairs = merge_pairs([np.asarray(p, np.int64).reshape(-1, 2) for p in parts]).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
