"""Epoch orders are permutations, deterministic per (seed, epoch); rank and worker splits cover each sample once."""

import numpy as np
import pytest
import torch

from medscale.data.order import epoch_order, rank_stream, remaining, worker_stream

SIZES = [100, 37, 100, 5, 64]


def test_epoch_order_is_a_deterministic_permutation():
    a = epoch_order(SIZES, seed=3, epoch=0, window=50)
    assert sorted(a.tolist()) == list(range(sum(SIZES)))
    assert np.array_equal(a, epoch_order(SIZES, seed=3, epoch=0, window=50))
    assert not np.array_equal(a, epoch_order(SIZES, seed=3, epoch=1, window=50))
    assert not np.array_equal(a, epoch_order(SIZES, seed=4, epoch=0, window=50))
    assert epoch_order(SIZES, 0, 0, shuffle=False).tolist() == list(range(sum(SIZES)))


def test_window_shuffle_stays_local():
    """Each window holds samples of a few consecutive shards of the shard permutation (streaming-friendly)."""
    order = epoch_order([1000] * 8, seed=0, epoch=0, window=1000)
    for lo in range(0, 8000, 1000):
        assert len(set((order[lo:lo + 1000] // 1000).tolist())) <= 2


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("remainder", ["pad", "drop", "uneven"])
def test_ranks_split_the_epoch(world, remainder):
    order = epoch_order(SIZES, 0, 0)
    rest = remaining(order, 0, world, remainder)
    streams = [rank_stream(rest, r, world) for r in range(world)]
    got = np.concatenate(streams)
    n = len(order)
    if remainder == "uneven":
        assert sorted(got.tolist()) == list(range(n))
    elif remainder == "drop":
        assert len(set(got.tolist())) == len(got) >= n - world + 1
        assert len({len(s) for s in streams}) == 1
    else:
        assert set(got.tolist()) == set(range(n)) and len(got) < n + world
        assert len({len(s) for s in streams}) == 1


def test_workers_take_whole_batches_round_robin():
    stream = np.arange(23)
    parts = [worker_stream(stream, w, 3, 4) for w in range(3)]
    assert parts[0].tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))


def test_resume_point_is_independent_of_world_size():
    order = epoch_order(SIZES, 1, 2)
    consumed = 2 * 30  # two ranks took 30 samples each
    rest = remaining(order, consumed, 3, "uneven")
    assert np.array_equal(rest, order[60:])


def test_weighted_order_follows_the_rule():
    from medscale.data.order import weighted_order

    groups = np.array([0] * 10 + [1] * 8 + [2] * 6)  # three sources
    order = epoch_order([24], seed=1, epoch=0)
    seen_c = []
    for epoch in range(4):
        out = weighted_order(epoch_order([24], 1, epoch), groups, [2.0, 0.25, 1.5], seed=1, epoch=epoch)
        counts = np.bincount(out, minlength=24)
        assert (counts[:10] == 2).all()  # weight 2: every sample twice
        assert counts[10:18].sum() == 2 and set(counts[10:18]) <= {0, 1}  # 0.25 x 8 = 2 samples, once each
        assert sorted(counts[18:]) == [1, 1, 1, 2, 2, 2]  # 1.5 x 6 = 9: all once, 3 of them twice
        seen_c.extend(np.flatnonzero(counts[10:18]))
        assert np.array_equal(out, weighted_order(epoch_order([24], 1, epoch), groups, [2.0, 0.25, 1.5], 1, epoch))
    assert sorted(seen_c) == list(range(8))  # weight 0.25: every sample once in 4 epochs, none repeated
    assert len(order) == 24


def test_sample_seeds_are_pure_distinct_and_valid_torch_seeds():
    from medscale.data.order import sample_seeds

    indices = np.arange(200_000)
    seeds = sample_seeds(0, 0, indices)
    assert seeds.dtype == np.int64 and (seeds >= 0).all() and len(np.unique(seeds)) == len(indices)
    np.testing.assert_array_equal(sample_seeds(0, 0, indices[::-1][:1000]), seeds[::-1][:1000])  # any order, any split
    others = np.concatenate([sample_seeds(0, 1, indices[:1000]), sample_seeds(1, 0, indices[:1000])])
    assert len(np.intersect1d(others, seeds[:1000])) == 0 and len(np.unique(others)) == 2000
    torch.manual_seed(int(seeds[-1]))  # in torch's seed range
