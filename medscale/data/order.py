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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample `index`'s augmentation in `epoch`: a pure function of the three, so that a resumed run
    (any world size, any number of workers) augments every sample exactly as the uninterrupted run did."""
    mixed = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return int(mixed >> np.uint64(1))  # torch.manual_seed takes a non-negative int64
