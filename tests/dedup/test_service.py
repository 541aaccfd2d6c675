"""`medscale dedup` on real sharded corpora: decisions in the manifest, shards untouched, planted copies across
sources, rehash = sharding's hashes, contamination, reduction while sharding, Ray = in-process, errors."""

import hashlib
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from medscale.cli import main
from medscale.config import load as load_config
from medscale.core.errors import ConfigError, InputError
from medscale.core.storage import filesystem
from medscale.data.manifest import HASH_COLUMNS, read_manifest, update_rows
from medscale.data.service import run_sharding
from medscale.dedup.config import DedupConfig
from medscale.dedup.contamination import run_contamination
from medscale.dedup.rehash import rehash_manifest as rehash
from medscale.dedup.service import run_dedup
from medscale.dedup.volume import slice_reducer
from tests.conftest import MEDMNIST, PYDICOM_DATA, PYDICOM_FILES, shard_config

PLANTED = 40


def _planted_copies(folder):
    """Near-copies of BreastMNIST test images as another source: upscaled, JPEG re-encoded, noise added."""
    folder.mkdir(parents=True)
    images = np.load(MEDMNIST / "breastmnist_28.npz")["test_images"][:PLANTED]
    rng = np.random.default_rng(0)
    for i, img in enumerate(images):
        big = np.asarray(Image.fromarray(img).resize((56, 56), Image.BICUBIC)).astype(np.float32)
        noisy = np.clip(big + rng.normal(0, 2, big.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
        (folder / f"copy{i:03d}.jpg").write_bytes(buf.getvalue())


def _build(root, **kwargs):
    inputs = root / "in"
    shutil.copytree(PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N", inputs / "ct" / "series")
    shutil.copy(PYDICOM_DATA / "emri_small.dcm", inputs / "ct" / "mr.dcm")
    shutil.copy(MEDMNIST / "breastmnist_28.npz", inputs / "breast.npz")
    _planted_copies(inputs / "copies")
    out = root / "out"
    cfg = shard_config([f"ct={inputs / 'ct'}", f"breast={inputs / 'breast.npz'}", f"copies={inputs / 'copies'}"],
                       out, shard_size=300, **kwargs)
    run_sharding(cfg, slice_reducer(cfg.reduce, cfg.reduce_threshold) if cfg.reduce else None)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("dedup"))


def _fresh(corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(corpus, out)
    return out


def _table(out):
    fs, root = filesystem(str(out))
    t = read_manifest(fs, root)
    return {k: r for k, r in zip(t["key"].to_pylist(), t.to_pylist())}


def _shard_digest(out):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*"))}


def test_sharding_writes_hashes(corpus):
    rows = [r for r in _table(corpus).values() if r["status"] == "kept"]
    assert rows and all(r[h] is not None for r in rows for h in HASH_COLUMNS)


def test_hash_global_finds_planted_copies_across_sources(corpus, tmp_path):
    out = _fresh(corpus, tmp_path)
    before = _shard_digest(out)
    summary = run_dedup(str(out), DedupConfig(strategy="hash-global", executor="local", progress=False))
    assert summary.written and summary.duplicates > 0
    assert _shard_digest(out) == before  # the shards are not touched
    rows = _table(out)
    copies = {r["path"].rsplit("copy", 1)[1][:3]: r for r in rows.values() if r["source"] == "copies"}
    originals = {r["frame"]: r for r in rows.values() if r["source"] == "breast" and r["split"] == "test"}
    found = 0
    for i in range(PLANTED):
        copy, orig = copies[f"{i:03d}"], originals[i]
        assert not (copy["status"] == "kept" and orig["status"] == "kept" and
                    bin(copy["dhash"] ^ orig["dhash"]).count("1") <= 6)  # never both kept when within reach
        found += copy["duplicate_of"] == orig["key"] or orig["duplicate_of"] == copy["key"] or (
            copy["duplicate_of"] is not None and copy["duplicate_of"] == orig["duplicate_of"])
    assert found >= 0.9 * PLANTED
    for r in rows.values():
        if r["status"] == "duplicate":
            assert rows[r["duplicate_of"]]["status"] == "kept"  # an exemplar is always kept
            assert r["dedup_distance"] <= 6 and r["dedup_strategy"].startswith("hash-global dhash<=6")
    report = out / "dedup"
    assert json.loads((report / "report.json").read_text())["by_source"]
    assert Image.open(report / "groups.png").size[0] > 0


def test_verified_phash_finds_the_planted_copies(corpus, tmp_path):
    out = _fresh(corpus, tmp_path)
    summary = run_dedup(str(out), DedupConfig(strategy="hash-global", hash="phash", threshold=4,
                                              verify="dhash+ahash<=16", executor="local", progress=False))
    assert "verify dhash+ahash<=16" in summary.strategy
    rows = _table(out)
    orig = {r["frame"]: r for r in rows.values() if r["source"] == "breast" and r["split"] == "test"}
    copies = [r for r in rows.values() if r["source"] == "copies"]
    grouped = 0
    for r in copies:
        o = orig[int(r["path"].rsplit("copy", 1)[1][:3])]
        ex_copy = r["duplicate_of"] or r["key"]
        ex_orig = o["duplicate_of"] or o["key"]
        grouped += ex_copy == ex_orig
    assert grouped >= 0.9 * PLANTED


def test_hash_volume_is_per_volume_in_slice_order(corpus, tmp_path):
    out = _fresh(corpus, tmp_path)
    run_dedup(str(out), DedupConfig(strategy="hash-volume", threshold=12, executor="local", progress=False))
    rows = _table(out).values()
    dups = [r for r in rows if r["status"] == "duplicate"]
    assert dups, "the MR volume's neighbouring slices are near-duplicates at 12 bits"
    by_key = {r["key"]: r for r in rows}
    for r in dups:
        ex = by_key[r["duplicate_of"]]
        assert ex["volume"] == r["volume"] and ex["slice"] < r["slice"]
    assert all(r["status"] == "kept" for r in rows if r["volume"] is None)  # 2D images are left alone


def test_every_n_and_rerun_replaces_decisions(corpus, tmp_path):
    out = _fresh(corpus, tmp_path)
    run_dedup(str(out), DedupConfig(strategy="every-n", every_n=2, executor="local", progress=False))
    rows = [r for r in _table(out).values() if r["volume"] is not None and r["status"] != "quarantined"]
    by_volume = {}
    for r in rows:
        by_volume.setdefault(r["volume"], []).append(r)
    for members in by_volume.values():
        members.sort(key=lambda r: r["slice"])
        assert [r["status"] for r in members] == ["kept" if i % 2 == 0 else "duplicate" for i in range(len(members))]
    run_dedup(str(out), DedupConfig(strategy="every-n", every_n=1, executor="local", progress=False))
    assert all(r["status"] == "kept" for r in _table(out).values() if r["status"] != "quarantined")


def test_rehash_recomputes_sharding_hashes(corpus, tmp_path):
    out = _fresh(corpus, tmp_path)
    expected = {k: tuple(r[h] for h in HASH_COLUMNS) for k, r in _table(out).items() if r["shard"]}
    fs, root = filesystem(str(out))
    keys = list(expected)
    update_rows(fs, root, pa.table({"key": keys, **{h: pa.nulls(len(keys), pa.uint64()) for h in HASH_COLUMNS}}))
    with pytest.raises(InputError, match="--rehash"):
        run_dedup(str(out), DedupConfig(executor="local", progress=False))
    assert rehash(str(out), DedupConfig(executor="local", progress=False)) == len(keys)
    assert {k: tuple(r[h] for h in HASH_COLUMNS) for k, r in _table(out).items() if r["shard"]} == expected


def test_contamination_check_and_exclude(corpus, tmp_path):
    out = _fresh(corpus, tmp_path)
    npz = MEDMNIST / "breastmnist_28.npz"
    cfg = DedupConfig(against=[f"breast_eval={npz}", f"pneumonia={MEDMNIST / 'pneumoniamnist_28.npz'}"],
                      against_threshold=0, against_verify=None, exclude=True, executor="local", progress=False)
    summary = run_contamination(str(out), cfg)
    sets = {(s["set"], s["split"]): s for s in summary.sets}
    assert sets[("breast_eval", "test")]["fraction"] == 1.0  # the corpus holds BreastMNIST's test split
    assert sets[("pneumonia", "test")]["contaminated"] <= 2  # unrelated images: (almost) none
    assert summary.excluded >= 780
    rows = _table(out).values()
    excluded = [r for r in rows if r["status"] == "excluded"]
    assert len(excluded) == summary.excluded and all("breastmnist_28.npz#" in r["duplicate_of"] for r in excluded
                                                     if r["source"] == "breast")
    # a later reduction leaves the exclusions alone
    run_dedup(str(out), DedupConfig(strategy="hash-global", executor="local", progress=False))
    assert sum(r["status"] == "excluded" for r in _table(out).values()) == summary.excluded


def test_the_default_contamination_rule_flags_no_unrelated_image_and_finds_resized_copies(tmp_path):
    """28-px chest X-rays are so alike that the reduction's Hash-6 flags 92% of PneumoniaMNIST's test split against
    its train split; the default rule flags none of them, and finds every test image resized to 56 px."""
    data = np.load(MEDMNIST / "pneumoniamnist_28.npz")
    np.savez(tmp_path / "train.npz", train_images=data["train_images"], train_labels=data["train_labels"])
    np.savez(tmp_path / "test.npz", test_images=data["test_images"], test_labels=data["test_labels"])
    copies = np.stack([np.asarray(Image.fromarray(i).resize((56, 56), Image.BICUBIC)) for i in data["test_images"]])
    np.savez(tmp_path / "copies.npz", train_images=copies, train_labels=data["test_labels"])
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    run_sharding(shard_config([tmp_path / "train.npz"], clean))
    run_sharding(shard_config([tmp_path / "train.npz", tmp_path / "copies.npz"], planted))
    check = DedupConfig(against=[str(tmp_path / "test.npz")], exclude=True, executor="local", progress=False)
    unrelated = run_contamination(str(clean), check)
    assert unrelated.sets[0]["contaminated"] <= 0.02 * 624 and unrelated.excluded <= 0.02 * 4708
    found = run_contamination(str(planted), check)
    assert found.sets[0]["contaminated"] >= 0.95 * 624
    assert len(found.sets[0]["matched"]) == found.sets[0]["contaminated"]  # every match named in the report
    assert "dhash<=3 and ahash+phash<=6" in found.format()


def test_reduce_while_sharding_matches_manifest_reduction(corpus, tmp_path):
    reduced = _build(tmp_path / "r", reduce="hash-volume", reduce_threshold=12)
    later = _fresh(corpus, tmp_path)
    run_dedup(str(later), DedupConfig(strategy="hash-volume", threshold=12, executor="local", progress=False))
    a, b = _table(reduced), _table(later)
    assert {k for k, r in a.items() if r["status"] == "duplicate"} == {k for k, r in b.items()
                                                                     if r["status"] == "duplicate"}
    dropped = [r for r in a.values() if r["status"] == "duplicate"]
    assert dropped and all(r["shard"] is None for r in dropped)
    from tests.data.test_service import shard_contents
    assert not set(r["key"] for r in dropped) & set(shard_contents(reduced))


def test_errors_are_clear(tmp_path, corpus):
    with pytest.raises(ConfigError, match="dedup.strategy"):
        load_config(None, ["dedup.strategy=fuzzy"])
    with pytest.raises(InputError, match="no manifest"):
        run_dedup(str(tmp_path / "nothing"), DedupConfig(executor="local"))
    with pytest.raises(InputError, match="dedup.embeddings"):
        run_dedup(str(corpus), DedupConfig(strategy="embedding", executor="local", dry_run=True))
    bad = tmp_path / "emb.parquet"
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"key": ["x"], "embedding": [[0.1, 0.2]]}), bad)
    with pytest.raises(InputError, match="no embedding for"):
        run_dedup(str(corpus), DedupConfig(strategy="embedding", embeddings=str(bad), executor="local",
                                           dry_run=True))


def test_embedding_strategy_with_an_embeddings_file(corpus, tmp_path):
    out = _fresh(corpus, tmp_path)
    rows = [r for r in _table(out).values() if r["shard"]]
    keys = [r["key"] for r in rows]
    # embeddings of the hash bits: identical hashes -> identical embeddings -> duplicates
    bits = np.array([[(r["phash"] >> b) & 1 for b in range(64)] for r in rows], np.float32) * 2 - 1
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"key": keys, "embedding": list(bits)}), tmp_path / "e.parquet")
    summary = run_dedup(str(out), DedupConfig(strategy="embedding", embeddings=str(tmp_path / "e.parquet"),
                                              eps=0.01, executor="local", progress=False))
    assert summary.samples == len(keys) and summary.duplicates >= 1


def test_embedding_strategy_with_an_exported_backbone(corpus, tmp_path):
    import timm
    import torch

    from medscale.core.card import save_backbone
    from tests.core.test_card import CARD

    torch.manual_seed(0)
    save_backbone(timm.create_model(CARD.model, pretrained=False, **CARD.kwargs), tmp_path / "export", CARD)
    out = _fresh(corpus, tmp_path)
    summary = run_dedup(str(out), DedupConfig(strategy="embedding", backbone=str(tmp_path / "export"), eps=0.002,
                                              executor="local", progress=False))
    import pyarrow.parquet as pq
    emb = pq.read_table(out / "dedup" / "embeddings.parquet")
    assert emb.num_rows == summary.samples and len(emb["embedding"][0]) == 512
    rows = _table(out)
    dups = [r for r in rows.values() if r["status"] == "duplicate"]
    assert all(rows[r["duplicate_of"]]["status"] == "kept" and r["dedup_distance"] >= 0 for r in dups)
    with pytest.raises(InputError, match="not an exported backbone"):
        run_dedup(str(out), DedupConfig(strategy="embedding", backbone=str(tmp_path), executor="local"))


@pytest.mark.slow
def test_ray_equals_in_process(corpus, tmp_path, ray_local):
    for strategy in ("hash-volume", "hash-global"):
        a, b = _fresh(corpus, tmp_path / f"a{strategy}"), _fresh(corpus, tmp_path / f"b{strategy}")
        run_dedup(str(a), DedupConfig(strategy=strategy, executor="local", progress=False))
        run_dedup(str(b), DedupConfig(strategy=strategy, executor="ray", progress=False))
        assert _table(a) == _table(b)


def test_cli_dedup(corpus, tmp_path, capsys):
    out = _fresh(corpus, tmp_path)
    assert main(["dedup", str(out), "--strategy", "hash-global", "-k", "4", "--executor", "local", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["strategy"] == "hash-global dhash<=4 star" and summary["duplicates"] > 0
    with pytest.raises(SystemExit):
        main(["dedup", str(out), "--strategy", "nonsense"])
    assert main(["dedup", str(tmp_path / "missing"), "--executor", "local"]) == 2


def test_write_kept_shards_hold_only_kept_samples_and_resume(corpus, tmp_path):
    from medscale.dedup.compact import write_kept
    from tests.data.test_service import check_exactly_once, shard_contents

    out = _fresh(corpus, tmp_path)
    run_dedup(str(out), DedupConfig(strategy="hash-global", executor="local", progress=False))
    before = _table(out)
    kept = {k for k, r in before.items() if r["status"] == "kept"}
    target = tmp_path / "kept"
    summary = write_kept(str(out), str(target), DedupConfig(executor="local", progress=False), shard_size=200)
    contents = shard_contents(target)  # fails on a key seen twice
    assert set(contents) == kept and summary.kept == len(kept)
    old = shard_contents(out)
    assert all(contents[k][1] == old[k][1] for k in kept)  # members copied byte for byte
    check_exactly_once(target)
    after = _table(target)
    assert set(after) == set(before) and all((r["shard"] is not None) == (r["status"] == "kept")
                                             for r in after.values())
    # a rerun finds everything committed and writes nothing new
    again = write_kept(str(out), str(target), DedupConfig(executor="local", progress=False), shard_size=200)
    assert again.shards == 0 and set(shard_contents(target)) == kept


@pytest.mark.slow
def test_dedup_and_contamination_on_s3(corpus, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    fs.put(str(corpus), "medscale-test/dedup", recursive=True)
    url = "s3://medscale-test/dedup"
    summary = run_dedup(url, DedupConfig(strategy="hash-global", executor="local", progress=False,
                                         storage_options=s3_server))
    assert summary.written and summary.duplicates > 0 and fs.exists("medscale-test/dedup/dedup/groups.png")
    cont = run_contamination(url, DedupConfig(against=[str(MEDMNIST / "breastmnist_28.npz")], against_threshold=0,
                                              executor="local", progress=False, storage_options=s3_server))
    assert {s["split"]: s["fraction"] for s in cont.sets}["test"] == 1.0
    from medscale.data.dataset import ShardDataset

    ds = ShardDataset(url, storage_options=s3_server, rank=0, world_size=1)
    assert len(ds.index) == summary.kept
