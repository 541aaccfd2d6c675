"""Perceptual hashes of samples already in shards (manifests written before hashes were computed at sharding)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from medscale.core.storage import filesystem, join
from medscale.data.png import decode_png
from medscale.data.shards import iter_shard
from medscale.dedup.hashes import hash_images


def hash_shard(shard: str, root_url: str, storage_options: Mapping[str, Any]) -> Tuple[List[str], Dict[str, Any]]:
    """(keys, {hash name: uint64[N]}) of every sample in one shard (a Ray task)."""
    fs, root = filesystem(root_url, storage_options)
    keys, images = [], []
    with fs.open(join(root, shard), "rb") as fh:
        for key, members in iter_shard(fh, shard):
            if "png" in members:
                keys.append(key)
                images.append(decode_png(members["png"]))
    return keys, hash_images(images)
