"""MinHash over sets: signatures equal to datasketch's, the numpy bands equal to datasketch's MinHashLSH; the same
scan in two sources (real volumes and planted re-exports: another window, every second slice, reversed, thicker
slices) found by `volume-overlap` and by the contamination check's volume level, with no pair of different real
volumes."""

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from medscale.core.executor import LocalExecutor
from medscale.core.storage import filesystem
from medscale.data.manifest import read_manifest
from medscale.data.service import run_sharding
from medscale.dedup.config import DedupConfig
from medscale.dedup.contamination import run_contamination
from medscale.dedup.minhash import (
    band_pairs,
    datasketch_minhash,
    distinct_rows,
    lean,
    lsh_params,
    merge_band_pairs,
    signatures,
)
from medscale.dedup.overlap import containment, overlap_decisions, volume_sets
from medscale.dedup.service import run_dedup
from medscale.dedup.strategies import Corpus, create_strategy
from medscale.hashing.shingles import codes_of
from tests.conftest import shard_config
from tests.dedup.planted import REAL, REEXPORTS, plant


def test_signatures_are_datasketchs_minhash():
    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 2**63, size, dtype=np.uint64)) for size in (0, 1, 5, 300, 2000)]
    sigs = signatures(sets, 64)
    for sig, tokens in zip(sigs, sets):
        np.testing.assert_array_equal(sig, datasketch_minhash(tokens, 64).hashvalues)
    a, b = sets[3], np.concatenate([sets[3][:150], sets[4][:150]])  # Jaccard 150 / 450
    estimate = lean(signatures([a], 256)[0]).jaccard(lean(signatures([b], 256)[0]))
    assert abs(estimate - 1 / 3) < 0.1


def test_numpy_bands_find_what_datasketchs_minhashlsh_finds():
    from datasketch import MinHashLSH

    rng = np.random.default_rng(1)
    base = [rng.integers(0, 2**63, 60, dtype=np.uint64) for _ in range(40)]
    sets = base + [np.concatenate([s[:50], rng.integers(0, 2**63, 10, dtype=np.uint64)]) for s in base[:20]]
    sigs = signatures(sets, 128)
    bands, rows = lsh_params(0.5, 128)
    mine = merge_band_pairs([band_pairs(sigs, b, rows) for b in range(bands)])
    index = MinHashLSH(num_perm=128, params=(bands, rows))
    for i, sig in enumerate(sigs):
        index.insert(i, lean(sig))
    theirs = sorted({(min(i, j), max(i, j)) for i, sig in enumerate(sigs) for j in index.query(lean(sig)) if j != i})
    assert [tuple(p) for p in mine.tolist()] == theirs
    assert {(i, i + 40) for i in range(20)} <= set(theirs)  # every planted near-copy is a candidate


def test_distinct_rows_are_numpys_unique_rows_each_by_its_first_index():
    rng = np.random.default_rng(2)
    sigs = rng.integers(0, 1 << 32, (500, 16), dtype=np.uint32)
    sigs[250:400] = sigs[rng.integers(0, 100, 150)]  # planted equal rows
    first, inverse = distinct_rows(sigs)
    _, numpy_first = np.unique(sigs, axis=0, return_index=True)
    assert sorted(first.tolist()) == sorted(numpy_first.tolist())
    np.testing.assert_array_equal(sigs[first][inverse], sigs)
    # equal first two values but different rows, interleaved: still exact, at worst a group split in two
    sigs = np.tile(np.uint32([7, 9]), (300, 1))
    sigs = np.concatenate([sigs, rng.integers(0, 2, (300, 14), dtype=np.uint32)], axis=1)
    first, inverse = distinct_rows(sigs)
    np.testing.assert_array_equal(sigs[first][inverse], sigs)
    assert len(first) >= len(np.unique(sigs, axis=0)) and (first[inverse] <= np.arange(len(sigs))).all()


def test_decisions_fold_copies_into_the_kept_volume_and_take_the_nearest_slices():
    hashes = np.array([0b1111, 0b11110000, 0b111100000000,  # volume 0: three slices
                       0b1111, 0b111100000001,  # volume 1: two of them, one a bit off
                       0b1111], np.uint64)  # volume 2: one
    members = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5])]
    pairs = np.array([[1, 0, 1.0], [2, 1, 1.0], [2, 0, 1.0], [0, 1, 0.7]])  # 2 in 1 in 0
    exemplar, distance, target = overlap_decisions(hashes, members, np.array([0, 1, 2]), pairs)
    assert target.tolist() == [0, 0, 0]  # volume 0 is before 1 in priority: its containment in 1 does not count
    assert exemplar.tolist() == [0, 1, 2, 0, 2, 0] and distance.tolist() == [0, 0, 0, 0, 1, 0]


@pytest.fixture(scope="module")
def planted_corpus(tmp_path_factory):
    """The real volumes (source `orig`) and their planted re-exports (source `mirror`), sharded."""
    root = tmp_path_factory.mktemp("overlap")
    inputs, planted = plant(root / "mirror")
    run_sharding(shard_config(inputs, root / "corpus", max_size=128))
    return root, planted


def _volumes(corpus: Path):
    """volume id -> (what it is: a real volume's name, or (name, re-export)), its rows."""
    rows = [r for r in read_manifest(*filesystem(str(corpus))).to_pylist() if r["volume"] and r["shard"]]
    real = {str(p): n for n, p in REAL.items()}
    out = defaultdict(list)
    for r in rows:
        path = Path(r["path"])
        what = real.get(str(path)) or real.get(str(path.parent)) or tuple(path.name.split(".")[0].split("-"))
        out[r["volume"]].append((what, r))
    return {v: (items[0][0], [r for _, r in items]) for v, items in out.items()}


def test_every_planted_reexport_is_found_and_no_two_real_volumes_pair(planted_corpus, tmp_path):
    root, planted = planted_corpus
    corpus = tmp_path / "corpus"
    shutil.copytree(root / "corpus", corpus)
    summary = run_dedup(str(corpus), DedupConfig(strategy="volume-overlap", executor="local", progress=False))
    volumes = _volumes(corpus)
    assert len(volumes) == len(REAL) * (1 + len(REEXPORTS))
    by_key = {r["key"]: (what, r) for what, rows in volumes.values() for r in rows}
    scan_of = {what: (what if isinstance(what, str) else what[0]) for what, _ in volumes.values()}
    folded = defaultdict(set)  # each real scan -> the volumes folded into the kept copy of it
    for what, rows in volumes.values():
        targets = {scan_of[by_key[r["duplicate_of"]][0]] for r in rows if r["status"] == "duplicate"}
        kept = [r for r in rows if r["status"] == "kept"]
        assert not (kept and targets), what  # a volume is kept whole or folded whole
        assert targets <= {scan_of[what]}, (what, targets)  # never folded into another scan: no false pair
        folded[scan_of[what]].add(what if targets else None)
    for name in REAL:  # every copy of every scan folded, one copy of each kept
        copies = {name} | {(name, kind) for kind in REEXPORTS}
        assert len(folded[name] - {None}) == len(copies) - 1 and None in folded[name], name
    assert summary.strategy == "volume-overlap dhash containment>=0.25"
    dups = [r for _, rows in volumes.values() for r in rows if r["status"] == "duplicate"]
    assert all(r["dedup_strategy"] == summary.strategy for r in dups)
    keyed = {r["key"]: r for _, rows in volumes.values() for r in rows}
    assert all(r["dedup_distance"] == int(r["dhash"] ^ keyed[r["duplicate_of"]]["dhash"]).bit_count() for r in dups)


def test_the_set_separates_copies_from_other_scans(planted_corpus):
    root, _ = planted_corpus
    volumes = _volumes(root / "corpus")
    ids = list(volumes)
    members, hashes, start = [], [], 0
    for v in ids:
        rows = sorted(volumes[v][1], key=lambda r: r["slice"] or 0)
        hashes.extend(r["dhash"] for r in rows)
        members.append(np.arange(start, start + len(rows)))
        start += len(rows)
    sets = volume_sets(np.array(hashes, np.uint64), members)
    scan = [volumes[v][0] if isinstance(volumes[v][0], str) else volumes[v][0][0] for v in ids]
    real = {name: ids.index(v) for v in ids for name in [volumes[v][0]] if isinstance(name, str)}
    copies = [max(containment(sets[c], sets[real[scan[c]]]), containment(sets[real[scan[c]]], sets[c]))
              for c in range(len(ids)) if not isinstance(volumes[ids[c]][0], str)]
    other = [containment(sets[a], sets[b]) for a in range(len(ids)) for b in range(len(ids)) if scan[a] != scan[b]]
    assert len(copies) == len(REAL) * len(REEXPORTS)
    assert min(copies) > 0.3 and max(other) < 0.02, (min(copies), max(other))  # the threshold 0.25 between


def test_contamination_matches_volumes_and_excludes_them_whole(planted_corpus, tmp_path):
    root, _ = planted_corpus
    names = ("anatomical", "example4d", "emri", "cine")
    corpus = tmp_path / "corpus"
    run_sharding(shard_config([f"orig={REAL[n]}" for n in names], corpus, max_size=128))
    # slice by slice only exact copies (distance <= 1) match: the volume level excludes the rest of each scan
    summary = run_contamination(str(corpus), DedupConfig(against=[f"mirror={root / 'mirror'}"], exclude=True,
                                                         against_threshold=1, against_verify=None, executor="local",
                                                         progress=False))
    row = summary.sets[0]
    assert (row["volumes"], row["overlapping_volumes"]) == (len(REAL) * len(REEXPORTS), len(names) * len(REEXPORTS))
    rows = read_manifest(*filesystem(str(corpus))).to_pylist()
    assert all(r["status"] == "excluded" for r in rows if r["shard"])  # every slice, matched alone or not
    assert summary.excluded == sum(1 for r in rows if r["shard"])
    assert any(r["dedup_strategy"].startswith("contamination volume-overlap") for r in rows)


@pytest.fixture(scope="module")
def shifted_corpus(tmp_path_factory):
    """Real BreastMNIST and PneumoniaMNIST images (source `orig`) and 2-px shifted copies of 60 of them (`copies`)."""
    from medscale.demo import DEMO_DATA

    root = tmp_path_factory.mktemp("shifted")
    images = np.concatenate([np.load(DEMO_DATA / "medmnist" / f"{n}mnist_28.npz")["test_images"]
                             for n in ("breast", "pneumonia")])
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(images), 60, replace=False)
    shifted = np.stack([np.pad(images[i], ((2, 0), (2, 0)), mode="edge")[:28, :28] for i in chosen])
    np.savez(root / "orig.npz", test_images=images, test_labels=np.zeros(len(images), np.int64))
    np.savez(root / "copies.npz", test_images=shifted, test_labels=np.zeros(len(shifted), np.int64))
    run_sharding(shard_config([f"orig={root / 'orig.npz'}", f"copies={root / 'copies.npz'}"], root / "corpus",
                              shard_size=300))
    return root / "corpus", images, chosen


def _decisions(corpus):
    rows = read_manifest(*filesystem(str(corpus))).to_pylist()
    return {r["key"]: (r["status"], r["duplicate_of"], r["source"], r["frame"]) for r in rows if r["shard"]}


def _copies_found(decided, chosen):
    """How many shifted copies sit in their original's group."""
    by_frame = {(src, frame): key for key, (_, _, src, frame) in decided.items()}
    found = 0
    for copy_index, original in enumerate(chosen):
        copy_key, original_key = by_frame[("copies", copy_index)], by_frame[("orig", int(original))]
        exemplar = [decided[k][1] if decided[k][0] == "duplicate" else k for k in (copy_key, original_key)]
        found += exemplar[0] == exemplar[1]
    return found


def test_minhash_global_finds_whole_pixel_shifts_that_hashes_miss(shifted_corpus, tmp_path):
    corpus_src, images, chosen = shifted_corpus
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_src, corpus)
    summary = run_dedup(str(corpus), DedupConfig(strategy="minhash-global", executor="local", progress=False))
    decided = _decisions(corpus)
    assert _copies_found(decided, chosen) == len(chosen)
    def base(key):  # the real image a sample was made from
        _, _, src, frame = decided[key]
        return images[frame] if src == "orig" else images[chosen[frame]]

    wrong = [k for k, (status, dup_of, _, _) in decided.items()
             if status == "duplicate" and np.abs(base(k).astype(int) - base(dup_of).astype(int)).mean() > 8]
    assert summary.duplicates >= len(chosen) and len(wrong) <= 0.01 * summary.duplicates  # visibly different
    hashed = tmp_path / "hashed"
    shutil.copytree(corpus_src, hashed)
    run_dedup(str(hashed), DedupConfig(strategy="hash-global", executor="local", progress=False))
    assert _copies_found(_decisions(hashed), chosen) < 0.1 * len(chosen)  # what the 64-bit hashes miss
    side_file = corpus / "dedup" / "minhash-images.parquet"
    stored = pq.read_table(side_file)
    assert stored.num_rows == len(decided) and set(stored["key"].to_pylist()) == set(decided)
    before = side_file.read_bytes()
    again = run_dedup(str(corpus), DedupConfig(strategy="minhash-global", executor="local", progress=False))
    assert again.duplicates == summary.duplicates and _decisions(corpus) == decided
    assert side_file.read_bytes() == before  # every signature came from the side file: no shard was read again


@pytest.mark.parametrize("index", ["datasketch", "bands"])
def test_featureless_images_are_nobodys_copy_and_equal_signatures_are_one_group(index):
    from medscale.demo import DEMO_DATA

    real = np.load(DEMO_DATA / "medmnist" / "breastmnist_28.npz")["test_images"][:40]
    flat = [np.full((28, 28), level, np.uint8) for level in range(0, 250, 25)]  # 10 blank images, 10 grey levels
    images = list(real) + flat + [real[0].copy() for _ in range(5)]  # and five exact copies of the first
    n = len(images)
    corpus = Corpus(keys=np.array([f"k{i:03d}" for i in range(n)]), hashes=np.zeros(n, np.uint64),
                    volumes=np.array([None] * n, object), slices=np.full(n, -1),
                    signatures=signatures(codes_of(images), 128))
    exemplar, distance = create_strategy("minhash-global", index=index).reduce(corpus, LocalExecutor())
    blank = np.arange(len(real), len(real) + len(flat))
    assert (exemplar[blank] == blank).all() and (exemplar[exemplar[blank]] == blank).all()
    assert not np.isin(blank, exemplar[np.setdiff1d(np.arange(n), blank)]).any()
    assert (exemplar[-5:] == 0).all() and (distance[-5:] == 0).all()


@pytest.mark.slow
def test_the_minhash_strategies_agree_between_ray_and_in_process(planted_corpus, shifted_corpus, tmp_path,
                                                               ray_local):
    for name, source, extra in (("volume-overlap", planted_corpus[0] / "corpus", {}),
                                ("minhash-global", shifted_corpus[0], {}),
                                ("minhash-global", shifted_corpus[0], {"minhash_index": "bands"})):
        results = []
        for executor in ("local", "ray"):
            corpus = tmp_path / f"{name}-{executor}-{len(extra)}"
            shutil.copytree(source, corpus)
            run_dedup(str(corpus), DedupConfig(strategy=name, executor=executor, progress=False, **extra))
            results.append(_decisions(corpus))
        assert results[0] == results[1] and any(s == "duplicate" for s, *_ in results[0].values())
