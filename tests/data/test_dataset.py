"""ShardDataset / ShardLoader on a real sharded corpus: exactly once across ranks and workers, resume mid-epoch with
the same or another world size, dedup honoured, S3, clear errors, skipped damaged shards."""

import shutil

import pytest
import torch

from medscale.core.errors import InputError
from medscale.data.augment import resize_transform
from medscale.data.dataset import ShardDataset, ShardLoader
from medscale.dedup.config import DedupConfig

BATCH = 16


@pytest.fixture
def corpus(loader_corpus):
    return loader_corpus


def _dataset(url, **kwargs):
    kwargs.setdefault("batch_size", BATCH)
    kwargs.setdefault("transform", resize_transform(16))
    kwargs.setdefault("shuffle_window", 128)
    return ShardDataset(str(url), **kwargs)


def _keys(loader):
    return [list(batch["key"]) for batch in loader]


def _all_keys(url):
    return set(_dataset(url, rank=0, world_size=1).index.keys.tolist())


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_exactly_once_across_ranks_and_workers(corpus, world, workers):
    seen = []
    for rank in range(world):
        ds = _dataset(corpus, rank=rank, world_size=world, remainder="uneven", seed=5)
        batches = _keys(ShardLoader(ds, num_workers=workers))
        seen.extend(k for b in batches for k in b)
        assert ds.state_dict()["completed"]
    assert len(seen) == len(set(seen)) == len(_all_keys(corpus)) == 790


def test_pad_gives_every_rank_the_same_batches(corpus):
    counts, union = [], set()
    for rank in range(3):
        keys = [k for b in _keys(ShardLoader(_dataset(corpus, rank=rank, world_size=3))) for k in b]
        counts.append(len(keys))
        union |= set(keys)
    assert len(set(counts)) == 1 and union == _all_keys(corpus)


def test_order_is_deterministic_and_changes_with_the_epoch(corpus):
    a = _keys(ShardLoader(_dataset(corpus, seed=1, rank=0, world_size=1)))
    b = _keys(ShardLoader(_dataset(corpus, seed=1, rank=0, world_size=1)))
    assert a == b
    ds = _dataset(corpus, seed=1, rank=0, world_size=1)
    ds.set_epoch(1)
    assert _keys(ShardLoader(ds)) != a
    loader = ShardLoader(_dataset(corpus, seed=1, rank=0, world_size=1))
    first, second = _keys(loader), _keys(loader)  # without set_epoch the next iteration is the next epoch
    assert first == a and second != a and sorted(sum(second, [])) == sorted(sum(a, []))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_remaining_batches(corpus, workers):
    full = _keys(ShardLoader(_dataset(corpus, seed=2, rank=0, world_size=1), num_workers=workers))
    ds = _dataset(corpus, seed=2, rank=0, world_size=1)
    loader = ShardLoader(ds, num_workers=workers)
    head = []
    for batch in loader:
        head.append(list(batch["key"]))
        if len(head) == 7:
            break
    state = loader.state_dict()
    assert state["consumed"] == 7 * BATCH
    resumed = ShardLoader(_dataset(corpus, seed=2, rank=0, world_size=1), num_workers=workers)
    resumed.load_state_dict(state)
    resumed.dataset.set_epoch(0)  # what a training loop does after loading: must not restart the epoch
    assert head + _keys(resumed) == full


def test_world_size_change_mid_epoch_loses_and_repeats_nothing(corpus):
    delivered = []
    states = []
    for rank in range(2):  # 2 ranks run 5 steps each, then the job stops
        ds = _dataset(corpus, seed=3, rank=rank, world_size=2, remainder="uneven")
        for step, batch in enumerate(ShardLoader(ds)):
            delivered.extend(batch["key"])
            if step == 4:
                break
        states.append(ds.state_dict())
    assert states[0] == states[1] and states[0]["consumed"] == 2 * 5 * BATCH
    for rank in range(3):  # 3 ranks resume
        ds = _dataset(corpus, seed=3, rank=rank, world_size=3, remainder="uneven")
        ds.load_state_dict(states[0])
        delivered.extend(k for b in _keys(ShardLoader(ds, num_workers=2 if rank == 1 else 0)) for k in b)
    assert len(delivered) == len(set(delivered)) == len(_all_keys(corpus))


def test_dedup_decisions_are_honoured(corpus, tmp_path):
    from medscale.dedup.service import run_dedup

    out = tmp_path / "out"
    shutil.copytree(corpus, out)
    summary = run_dedup(str(out), DedupConfig(strategy="hash-volume", threshold=12, executor="local", progress=False))
    assert summary.duplicates > 0
    keys = [k for b in _keys(ShardLoader(_dataset(out, rank=0, world_size=1))) for k in b]
    assert len(keys) == summary.kept and len(keys) < len(_all_keys(corpus))


def test_batches_carry_keys_images_and_labels(corpus):
    batch = next(iter(ShardLoader(_dataset(corpus, rank=0, world_size=1, shuffle=False))))
    assert batch["image"].shape == (BATCH, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and set(batch["label"].tolist()) <= {-1, 0, 1}


def test_rank_from_the_torchrun_environment(corpus, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = _dataset(corpus)
    assert (ds.rank, ds.world_size) == (1, 2)


def test_errors_and_damaged_shards(corpus, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ShardDataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no kept samples"):
        ShardDataset(str(tmp_path / "empty"))
    out = tmp_path / "damaged"
    shutil.copytree(corpus, out)
    (out / "shard-000001.tar").unlink()
    ds = _dataset(out, rank=0, world_size=1, remainder="uneven")
    keys = [k for b in _keys(ShardLoader(ds)) for k in b]
    assert ds.skipped == 100 and len(keys) == 790 - 100
    gone = tmp_path / "gone"  # a whole shard (tar and index) missing, and a corrupt member in another
    shutil.copytree(corpus, gone)
    (gone / "shard-000002.tar").unlink()
    (gone / "shard-000002.idx").unlink()
    ds = _dataset(gone, rank=0, world_size=1, remainder="uneven")
    bad_key = ds.index.keys[0]
    shard = gone / ds.index.shards[ds.index.shard_of[0]]
    data = bytearray(shard.read_bytes())
    data[ds.index.offsets[0]:ds.index.offsets[0] + 16] = b"\0" * 16  # PNG signature destroyed
    shard.write_bytes(bytes(data))
    keys = [k for b in _keys(ShardLoader(ds)) for k in b]
    assert ds.skipped == 100 + 1 and len(keys) == 790 - 101 and bad_key not in keys


@pytest.mark.slow
def test_reads_from_s3(corpus, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    fs.put(str(corpus), "medscale-test/loader", recursive=True)
    ds = ShardDataset("s3://medscale-test/loader", storage_options=s3_server, batch_size=BATCH,
                      transform=resize_transform(16), rank=0, world_size=1)
    keys = [k for b in _keys(ShardLoader(ds, num_workers=2)) for k in b]
    assert sorted(keys) == sorted(_all_keys(corpus))


def test_create_loader_from_config(corpus):
    from medscale.config import load as load_config
    from medscale.core.errors import ConfigError
    from medscale.data import create_loader

    cfg = load_config(None, ["loader.image_size=16", "loader.batch_size=10", "loader.augment=contrastive",
                             "loader.small_crops=1", "loader.small_size=8", "loader.num_workers=0"]).loader
    loader = create_loader(str(corpus), cfg, rank=0, world_size=1)
    assert isinstance(loader, ShardLoader)  # auto on a machine without a GPU
    views = next(iter(loader))["views"]
    assert [tuple(v.shape) for v in views] == [(10, 3, 16, 16), (10, 3, 16, 16), (10, 3, 8, 8)]
    with pytest.raises(ConfigError, match="loader.remainder"):
        load_config(None, ["loader.remainder=spread"])


@pytest.mark.slow
def test_webdataset_reads_s3_through_the_registered_opener(corpus, s3_server):
    import s3fs
    import webdataset as wds

    from medscale.core.storage import register_webdataset_opener

    s3fs.S3FileSystem(**s3_server).put(str(corpus / "shard-000000.tar"), "medscale-test/wds/shard-000000.tar")
    register_webdataset_opener("s3", s3_server)
    keys = [s["__key__"] for s in wds.WebDataset("s3://medscale-test/wds/shard-000000.tar", shardshuffle=False)]
    assert len(keys) == 100


def test_source_weights_mix_the_epoch_and_resume_exactly(loader_corpus):
    from collections import Counter

    weights = {"breast": 0.5, "mr": 3.0}  # 780 breast samples -> 390 a epoch; 10 MR frames -> 30

    def epoch_keys(**kw):
        ds = ShardDataset(str(loader_corpus), seed=4, batch_size=10, source_weights=weights, rank=0, world_size=1,
                          **kw)
        return [s["key"] for s in ds]

    keys = epoch_keys()
    index = ShardDataset(str(loader_corpus)).index
    source = dict(zip(index.keys, index.sources))
    counts = Counter(keys)
    assert len(keys) == 390 + 30
    assert sorted(c for k, c in counts.items() if source[k] == "mr") == [3] * 10  # every MR frame three times
    breast = [c for k, c in counts.items() if source[k] == "breast"]
    assert len(breast) == 390 and set(breast) == {1}  # half of the breast images, once each
    two = ShardDataset(str(loader_corpus), seed=4, batch_size=10, source_weights=weights, rank=0, world_size=2)
    half = [s["key"] for _, s in zip(range(50), two)]
    resumed = ShardDataset(str(loader_corpus), seed=4, batch_size=10, source_weights=weights, rank=0, world_size=1)
    resumed.load_state_dict(two.state_dict())  # 2 ranks -> 1: the weighted epoch goes on where it stopped
    assert half == keys[0:100:2] and [s["key"] for s in resumed] == keys[100:]
    from medscale.core.errors import ConfigError

    with pytest.raises(ConfigError, match="does not have; its sources: breast, mr"):
        ShardDataset(str(loader_corpus), source_weights={"ct": 2.0})


@pytest.mark.parametrize("world, workers, weights", [(1, 0, None), (2, 1, None), (2, 0, {"breast": 0.5, "mr": 3.0}),
                                                     (3, 2, None)])
def test_a_state_saved_after_an_epochs_last_batch_resumes_into_the_next_epoch(corpus, world, workers, weights):
    """The state a checkpoint holds when a step ends an epoch (the iteration not yet ended): the resumed loader goes
    on with the next epoch exactly as the uninterrupted one does, for every rank."""
    for rank in range(world):
        def loader():
            return ShardLoader(_dataset(corpus, seed=6, rank=rank, world_size=world, source_weights=weights),
                               num_workers=workers)

        straight = loader()
        first, second = _keys(straight), _keys(straight)  # two epochs, uninterrupted
        stopped = loader()
        for n, _ in enumerate(stopped, start=1):
            if n == len(first):
                break  # the last batch of the epoch was trained on; the checkpoint is saved here
        state = stopped.state_dict()
        assert state["epoch"] == 0
        resumed = loader()
        resumed.load_state_dict(state)
        assert _keys(resumed) == second and resumed.state_dict()["epoch"] == 1


def test_an_epoch_with_nothing_left_for_a_world_size_moves_on(corpus):
    """790 samples consumed 789 on 2 ranks with `drop`: the one left cannot be split, so the epoch is over."""
    ds = _dataset(corpus, rank=1, world_size=2, remainder="drop")
    ds.load_state_dict({"epoch": 0, "seed": 0, "consumed": 789, "num_samples": 790})
    assert len(ds) == 0
    assert sum(len(b) for b in _keys(ShardLoader(ds))) == 395 and ds.state_dict()["epoch"] == 1
