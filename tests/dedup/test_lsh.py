"""LSH search: planted near pairs found, only true pairs returned, cross-set mode, grouping rules."""

import math

import numpy as np
import pytest

from medscale.dedup.groups import exemplars, star_exemplars
from medscale.dedup.lsh import brute_force_pairs, near_pairs, plan_lsh, table_pairs, table_recall


def planted(n=20000, pairs=400, k=6, seed=0):
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2 ** 64, n, dtype=np.uint64)
    src = rng.choice(n // 2, pairs, replace=False)
    dst = n // 2 + rng.choice(n // 2, pairs, replace=False)
    for s, d in zip(src, dst):
        bits = rng.choice(64, rng.integers(0, k + 1), replace=False).astype(np.uint64)
        hashes[d] = hashes[s] ^ np.bitwise_or.reduce(np.uint64(1) << bits) if len(bits) else hashes[s]
    return hashes, {(int(a), int(b)) for a, b in zip(src, dst)}


def test_table_recall_closed_form():
    assert table_recall(0, 20) == 1.0
    assert math.isclose(table_recall(1, 16), 48 / 64)
    plan = plan_lsh(10 ** 6, 6, recall=0.99)
    assert plan.recall >= 0.99 and plan.bits == 20


def test_planted_pairs_found_and_verified():
    hashes, truth = planted()
    pairs, plan = near_pairs(hashes, 6, recall=0.995)
    found = {(int(i), int(j)) for i, j, _ in pairs}
    assert len(truth & found) / len(truth) >= 0.98
    assert (pairs[:, 2] <= 6).all() and (pairs[:, 0] < pairs[:, 1]).all()
    exact = {(int(i), int(j)) for i, j, _ in brute_force_pairs(hashes, 6)}
    assert found <= exact  # no false positives: every pair was verified
    assert len(found) / len(exact) >= 0.98


def test_cross_groups_only():
    hashes, truth = planted(n=4000, pairs=100)
    groups = (np.arange(len(hashes)) >= 2000).astype(np.int8)
    plan = plan_lsh(len(hashes), 6)
    pairs = np.concatenate([table_pairs(hashes, plan, t, groups) for t in range(plan.tables)])
    assert (groups[pairs[:, 0]] != groups[pairs[:, 1]]).all()


def test_star_vs_connected_on_a_chain():
    pairs = np.array([[0, 1, 5], [1, 2, 5], [2, 3, 5]])  # 0-1-2-3: a chain, ends far apart
    connected, _ = exemplars(4, pairs)
    assert connected.tolist() == [0, 0, 0, 0]
    assert star_exemplars(4, pairs).tolist() == [0, 0, 2, 2]  # 2 is not within reach of 0: its own exemplar
    assert star_exemplars(5, np.zeros((0, 3), int)).tolist() == [0, 1, 2, 3, 4]


def test_verify_rule_filters_pairs_and_is_validated():
    from medscale.config import load as load_config
    from medscale.core.errors import ConfigError
    from medscale.dedup.lsh import parse_verify, verified

    assert parse_verify("dhash + ahash<=16") == (("dhash", "ahash"), 16)
    with pytest.raises(ConfigError, match="dedup.verify"):
        load_config(None, ["dedup.verify=colour<=3"])
    pairs = np.array([[0, 1, 2], [0, 2, 2]])
    extra = np.array([[0], [0b111], [0b1]], np.uint64)  # item 1 is 3 bits away on the second hash, item 2 one bit
    assert verified(pairs, extra, 2).tolist() == [[0, 2, 2]]
