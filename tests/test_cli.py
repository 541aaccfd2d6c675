"""The `medscale` command line: the demo (the README's main command) and clear errors with exit code 2."""

import pytest

from medscale.cli import main, split_overrides
from medscale.core.storage import filesystem
from medscale.data.manifest import read_manifest


def test_overrides_are_told_apart_from_inputs():
    inputs, overrides = split_overrides(["ct=/data/ct", "/x/y.nii", "shard.bit_depth=16", "s3://b/k=v"])
    assert inputs == ["ct=/data/ct", "/x/y.nii", "s3://b/k=v"]
    assert overrides == ["shard.bit_depth=16"]


def test_bad_override_exits_2_naming_the_key(tmp_path, capsys):
    code = main(["shard", str(tmp_path), "--output", str(tmp_path / "o"), "shard.bit_depth=12"])
    assert code == 2
    assert "shard.bit_depth" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_shards_the_bundled_real_corpus(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "shard.executor=local", "shard.progress=false",
                 "shard.max_size=128"]) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and "quarantined" in text
    assert "medscale dedup hash-volume dhash<=6" in text and (out / "dedup" / "groups.png").exists()
    rows = read_manifest(*filesystem(str(out))).to_pylist()
    kinds = {r["kind"] for r in rows if r["status"] == "kept"}
    assert kinds == {"npz", "dicom", "nifti"}
    modalities = {r["modality"] for r in rows if r["status"] == "kept"}
    assert {"US", "CR", "CT", "MR"} <= modalities
    assert max(r["width"] for r in rows if r["status"] == "kept") <= 128
    dups = [r for r in rows if r["status"] == "duplicate"]
    assert dups and all(r["volume"] is not None and r["shard"] for r in dups)  # decided per volume, in shards


def test_preview_writes_a_grid_of_augmented_views(tmp_path, capsys):
    import shutil

    from PIL import Image

    from medscale.data.service import run_sharding
    from tests.conftest import MEDMNIST, shard_config

    shutil.copy(MEDMNIST / "breastmnist_28.npz", tmp_path / "b.npz")
    run_sharding(shard_config([tmp_path / "b.npz"], tmp_path / "out"))
    png = tmp_path / "preview.png"
    assert main(["preview", str(tmp_path / "out"), "--augment", "contrastive", "-n", "4", "-o", str(png),
                 "loader.image_size=32", "loader.small_crops=1", "loader.small_size=16"]) == 0
    assert Image.open(png).size == (3 * 128, 4 * (128 + 14))  # 3 views per sample, 4 samples
