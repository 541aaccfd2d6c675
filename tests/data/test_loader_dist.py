"""Two real gloo ranks on one CPU: ShardDataset takes rank and world size from torch.distributed and the ranks
together deliver every kept sample exactly once; pad gives both ranks the same number of batches (DDP lock-step)."""

import json
import shutil

import pytest
import torch.multiprocessing as mp

from medscale.data.service import run_sharding
from tests.conftest import MEDMNIST, shard_config


def _rank_main(rank, world, url, init_file, out):
    import torch.distributed as dist

    from medscale.data.augment import resize_transform
    from medscale.data.dataset import ShardDataset, ShardLoader

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {}
        for remainder in ("uneven", "pad"):
            ds = ShardDataset(url, batch_size=16, transform=resize_transform(8), remainder=remainder, seed=7)
            keys = [k for batch in ShardLoader(ds) for k in batch["key"]]
            gathered = [None] * world
            dist.all_gather_object(gathered, {"rank": ds.rank, "world": ds.world_size, "keys": keys})
            result[remainder] = gathered
        if rank == 0:
            with open(out, "w") as fh:
                json.dump(result, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_ranks_split_an_epoch_exactly_once(tmp_path):
    shutil.copy(MEDMNIST / "breastmnist_28.npz", tmp_path / "breast.npz")
    out = tmp_path / "shards"
    run_sharding(shard_config([tmp_path / "breast.npz"], out, shard_size=100))
    result_file = tmp_path / "result.json"
    mp.spawn(_rank_main, args=(2, str(out), str(tmp_path / "init"), str(result_file)), nprocs=2, join=True)
    result = json.loads(result_file.read_text())
    uneven = result["uneven"]
    assert [g["rank"] for g in uneven] == [0, 1] and {g["world"] for g in uneven} == {2}
    keys = uneven[0]["keys"] + uneven[1]["keys"]
    assert len(keys) == len(set(keys)) == 780
    pad = result["pad"]
    assert len(pad[0]["keys"]) == len(pad[1]["keys"]) and set(pad[0]["keys"]) | set(pad[1]["keys"]) == set(keys)
