"""The Less-is-More greedy per volume, checked on a hand-made volume and against the paper's literal walk."""

import numpy as np
import pytest

from medscale.dedup.volume import VolumeReducer, every_n, greedy_volume


def paper_walk(hashes, threshold):
    """The published loop, verbatim in spirit: reference = first remaining; drop all remaining within threshold."""
    remaining = list(range(len(hashes)))
    exemplar = {}
    while remaining:
        ref = remaining[0]
        near = [i for i in remaining if bin(int(hashes[i]) ^ int(hashes[ref])).count("1") <= threshold]
        for i in near:
            exemplar[i] = ref
        remaining = [i for i in remaining if i not in near]
    return np.array([exemplar[i] for i in range(len(hashes))])


def test_known_answer():
    far = 0b111111111  # 9 bits from 0
    hashes = np.array([0, 0b1, far, 0b11, far ^ 0b1, 0b1111], np.uint64)
    exemplar, distance = greedy_volume(hashes, threshold=2)
    assert exemplar.tolist() == [0, 0, 2, 0, 2, 5]  # 0b1111 is 4 bits from slice 0 and 5 from slice 2: kept
    assert distance.tolist() == [0, 1, 0, 2, 1, 0]


def test_streaming_equals_the_papers_walk():
    rng = np.random.default_rng(0)
    for _ in range(20):
        base = rng.integers(0, 2 ** 63, 4, dtype=np.int64).astype(np.uint64)
        flips = rng.integers(0, 64, (40, 3)).astype(np.uint64)
        hashes = base[rng.integers(0, 4, 40)] ^ (np.uint64(1) << flips).sum(axis=1).astype(np.uint64)
        for k in (0, 2, 6):
            assert greedy_volume(hashes, k)[0].tolist() == paper_walk(hashes, k).tolist()


def test_reducer_rejects_negative_threshold():
    with pytest.raises(ValueError, match="threshold"):
        VolumeReducer(-1)


def test_every_n():
    assert every_n(7, 3).tolist() == [0, 0, 0, 3, 3, 3, 6]
    assert every_n(3, 1).tolist() == [0, 1, 2]
