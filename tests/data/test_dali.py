"""The DALI pipeline (CPU here) over the same shards: same keys as the torch loader, one reader shard per rank,
checkpoint resume, the augmentation views, 16-bit decoding, and a clear error on shards with dropped samples."""

import shutil

import numpy as np
import pytest

from medscale.core.errors import ConfigError
from medscale.data.dataset import ShardDataset
from medscale.data.service import run_sharding
from medscale.dedup.config import DedupConfig
from tests.conftest import PYDICOM_DATA, shard_config

pytest.importorskip("nvidia.dali")
from medscale.data.dali import DaliLoader  # noqa: E402


@pytest.fixture
def corpus(loader_corpus):
    return loader_corpus


def _loader(url, **kwargs):
    kwargs.setdefault("batch_size", 32)
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    kwargs.setdefault("remainder", "uneven")  # exactly once (the default, pad, repeats to even out the ranks)
    return DaliLoader(str(url), **kwargs)


def _keys(loader):
    return [list(b["key"]) for b in loader]


def test_same_keys_as_the_torch_loader(corpus):
    keys = [k for b in _keys(_loader(corpus)) for k in b]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(ShardDataset(str(corpus), rank=0, world_size=1).index.keys.tolist())


def test_one_reader_shard_per_rank(corpus):
    parts = [set(k for b in _keys(_loader(corpus, rank=r, world_size=2)) for k in b) for r in range(2)]
    assert not parts[0] & parts[1]
    assert parts[0] | parts[1] == set(ShardDataset(str(corpus), rank=0, world_size=1).index.keys.tolist())


def test_checkpoint_resume_gives_the_remaining_batches(corpus):
    full = _keys(_loader(corpus, seed=4))
    loader = _loader(corpus, seed=4)
    head = []
    for batch in loader:
        head.append(list(batch["key"]))
        if len(head) == 5:
            break
    resumed = _loader(corpus, seed=4)
    resumed.load_state_dict(loader.state_dict())
    assert head + _keys(resumed) == full


def test_views_labels_and_shapes(corpus):
    batch = next(iter(_loader(corpus, augment="contrastive", small_crops=2, small_size=16, batch_size=8)))
    assert [tuple(v.shape) for v in batch["views"]] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2
    assert set(batch["label"].tolist()) <= {-1, 0, 1}
    image = next(iter(_loader(corpus, augment="mae")))["image"]
    assert image.shape == (32, 3, 32, 32) and np.isfinite(image.numpy()).all()
    grey = next(iter(_loader(corpus, augment="contrastive", small_crops=1, small_size=16, channels=1,
                             crop_scale=(0.5, 1.0), small_crop_scale=(0.1, 0.3), batch_size=4)))
    assert [tuple(v.shape) for v in grey["views"]] == [(4, 1, 32, 32)] * 2 + [(4, 1, 16, 16)]


def test_16_bit_slices_are_decoded_at_16_bits(tmp_path):
    out = tmp_path / "out16"
    run_sharding(shard_config([PYDICOM_DATA / "emri_small.dcm"], out, bit_depth=16))
    batch = next(iter(_loader(out, augment="resize", image_size=64, mean=[0, 0, 0], std=[1, 1, 1],
                              shuffle=False, batch_size=10)))
    values = np.unique(batch["image"][0, 0].numpy())
    assert len(values) > 256  # more grey levels than 8 bits can hold


def test_dedup_marked_shards_need_write_kept(corpus, tmp_path):
    from medscale.dedup.compact import write_kept
    from medscale.dedup.service import run_dedup

    out = tmp_path / "out"
    shutil.copytree(corpus, out)
    run_dedup(str(out), DedupConfig(strategy="hash-volume", threshold=12, executor="local", progress=False))
    with pytest.raises(ConfigError, match="--write-kept"):
        _loader(out)
    write_kept(str(out), str(tmp_path / "kept"), DedupConfig(executor="local", progress=False))
    keys = {k for b in _keys(_loader(tmp_path / "kept")) for k in b}
    assert keys == set(ShardDataset(str(out), rank=0, world_size=1).index.keys.tolist())


def test_pad_gives_every_rank_the_same_number_of_batches(corpus):
    counts, union = [], set()
    for rank in range(3):
        batches = _keys(_loader(corpus, rank=rank, world_size=3, remainder="pad", batch_size=50))
        counts.append((len(batches), sum(len(b) for b in batches)))
        union |= {k for b in batches for k in b}
    assert len(set(counts)) == 1  # DDP lock-step: same batches, same samples on every rank
    assert union == set(ShardDataset(str(corpus), rank=0, world_size=1).index.keys.tolist())
