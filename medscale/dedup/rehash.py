"""Perceptual hashes of samples already in shards (manifests written before hashes were computed at sharding)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import pyarrow as pa

from medscale.core.errors import FaultError
from medscale.core.executor import executor_for, fan_out
from medscale.core.faults import describe, fault_kind, stopped, traceback_text
from medscale.core.lease import Lease
from medscale.core.storage import filesystem, full_url, join
from medscale.data.manifest import read_manifest, update_rows
from medscale.data.png import decode_png
from medscale.data.shards import iter_shard
from medscale.dedup.config import DedupConfig
from medscale.hashing.hashes import HASH_NAMES, hash_images


def shard_images(shard: str, root_url: str, storage_options: Mapping[str, Any]) -> Tuple[List[str], List[Any]]:
    """(keys, decoded images) of every sample of one shard that has a PNG, in shard order."""
    fs, root = filesystem(root_url, storage_options)
    keys, images = [], []
    with fs.open(join(root, shard), "rb") as fh:
        for key, members in iter_shard(fh, shard):
            if "png" in members:
                keys.append(key)
                images.append(decode_png(members["png"]))
    return keys, images


def hash_shard(shard: str, root_url: str, storage_options: Mapping[str, Any]) -> Tuple[List[str], Dict[str, Any]]:
    """(keys, {hash name: uint64[N]}) of every sample in one shard (a Ray task)."""
    keys, images = shard_images(shard, root_url, storage_options)
    return keys, hash_images(images)


REHASH_COST_S = 2e-4  # CPU-seconds per sample (PNG decode + three hashes), for `executor: auto`


def rehash_manifest(url: str, cfg: DedupConfig, force: bool = False) -> int:
    """Compute the manifest's hash columns from the shards at `url` (a task per shard), holding the output's
    writer lock; returns samples hashed."""
    fs, root = filesystem(url, cfg.storage_options)
    with Lease(fs, root, "medscale dedup --rehash", force=force):
        return _rehash(fs, root, cfg)


def _rehash(fs, root: str, cfg: DedupConfig) -> int:
    table = read_manifest(fs, root, columns=["key", "shard"])
    shards = sorted(set(s for s in table["shard"].to_pylist() if s))
    executor = executor_for(cfg.executor, len(table) * REHASH_COST_S, cfg.ray_address, cfg.num_cpus)
    keys, values = [], {name: [] for name in HASH_NAMES}
    try:
        for shard, result, error in fan_out(executor, hash_shard, shards, full_url(fs, root), cfg.storage_options,
                                        desc="hash", unit="shard", progress=cfg.progress):
            if error is not None:
                raise FaultError(stopped(f"hashing {shard}", fault_kind(error), describe(error),
                                         traceback_text(error))) from None
            keys.extend(result[0])
            for name in HASH_NAMES:
                values[name].append(result[1][name])
    finally:
        executor.close()
    if keys:
        update_rows(fs, root, pa.table({"key": keys, **{n: np.concatenate(values[n]) for n in HASH_NAMES}}))
    return len(keys)
