"""The sample order of an epoch and its split across ranks and dataloader workers: pure, deterministic functions.

One global order per (seed, epoch): shards permuted, then samples shuffled inside consecutive windows (a buffer
shuffle that never needs the whole epoch in memory). Ranks take the order round-robin, so after every rank has
taken k samples the first k * world_size of the order are consumed whatever the world size was: a restart with
another world size continues from there. Workers take batch-sized chunks of their rank's stream round-robin,
which is the order in which torch's DataLoader returns their batches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

REMAINDERS = ("pad", "drop", "uneven")


def epoch_order(shard_sizes: Sequence[int], seed: int, epoch: int, shuffle: bool = True,
                window: int = 4096) -> np.ndarray:
    """Global sample indices (numbered shard by shard) in this epoch's order -> `[N]` int64, a permutation."""
    sizes = np.asarray(shard_sizes, np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if not shuffle:
        return np.arange(int(sizes.sum()), dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    shards = rng.permutation(len(sizes))
    order = np.concatenate([starts[s] + np.arange(sizes[s]) for s in shards]) if len(sizes) else np.zeros(0, np.int64)
    for lo in range(0, len(order), window):
        block = order[lo:lo + window]
        order[lo:lo + window] = block[rng.permutation(len(block))]
    return order.astype(np.int64)


def remaining(order: np.ndarray, consumed: int, world_size: int, remainder: str) -> np.ndarray:
    """The part of `order` still to deliver after `consumed` samples, sized for `world_size` ranks:
    `pad` repeats the epoch's first samples so every rank gets as many, `drop` cuts the tail, `uneven` keeps all."""
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    rest = order[min(consumed, len(order)):]
    if remainder == "pad" and len(rest):
        pad = (-len(rest)) % world_size
        rest = np.concatenate([rest, np.resize(order, pad)]) if pad else rest
    elif remainder == "drop":
        rest = rest[: len(rest) - len(rest) % world_size]
    return rest


def rank_stream(rest: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's samples, in order (round-robin over ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rest[rank::world_size]


def worker_stream(stream: np.ndarray, worker: int, num_workers: int, batch_size: int) -> np.ndarray:
    """This worker's share of a rank stream: chunks `worker`, `worker + num_workers`, ... of `batch_size` samples."""
    if batch_size < 1 or num_workers < 1:
        raise ValueError("batch_size and num_workers must be >= 1")
    chunks = [stream[i:i + batch_size] for i in range(worker * batch_size, len(stream), num_workers * batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 `x` (wrapping arithmetic): a bijection that spreads every input bit."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """The seeds of samples `indices`' augmentations in `epoch` (`[N]` int64, non-negative): SplitMix64 chained over
    (seed, epoch, index), a pure function of the three, so that a resumed run (any world size, any number of workers)
    augments every sample exactly as the uninterrupted run did; one vectorised call per worker stream."""
    key = _splitmix64(_splitmix64(np.array([seed], np.uint64)) ^ np.uint64(epoch))
    return (_splitmix64(key ^ np.asarray(indices, np.uint64)) >> np.uint64(1)).astype(np.int64)


def weighted_order(order: np.ndarray, groups: np.ndarray, weights: Sequence[float], seed: int, epoch: int,
                   window: int = 4096) -> np.ndarray:
    """The epoch `order` with each group (source) mixed by its weight -> `[M]` int64 sample indices.

    The rule (what "exactly once" becomes): a sample of a group of weight `w` appears floor(w) times in the
    epoch, plus once more when it falls in this epoch's share of the fractional part: the group's samples are put
    in one fixed (seed, group) order and each epoch takes the next round(frac(w) x n) of them, wrapping around, so
    a source of weight 0.25 shows every sample once in 4 epochs before any repeats. Copies are laid out as
    successive passes over `order` (pass r holds the samples shown more than r times), then shuffled in windows:
    copies of one sample stay about a pass apart. Deterministic in (seed, epoch): resumable at any world size.
    `groups: [N]` group id of each sample; `weights: [G]`."""
    weights = np.asarray(weights, np.float64)
    counts = np.floor(weights)[groups].astype(np.int64)
    for g, w in enumerate(weights):
        members = np.flatnonzero(groups == g)
        take = int(round((w - np.floor(w)) * len(members)))
        if not take:
            continue
        fixed = members[np.random.default_rng([seed, 1_000_003, g]).permutation(len(members))]
        start = (epoch * take) % len(members)
        counts[np.take(fixed, np.arange(start, start + take), mode="wrap")] += 1
    passes = [order[counts[order] > r] for r in range(int(counts.max()) if len(counts) else 0)]
    out = np.concatenate(passes) if passes else np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, epoch, 7])
    for lo in range(0, len(out), window):
        block = out[lo:lo + window]
        out[lo:lo + window] = block[rng.permutation(len(block))]
    return out.astype(np.int64)
