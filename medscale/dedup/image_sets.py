"""MinHash signatures of every sample's local codes (`medscale.hashing.shingles`), from the shards (a task per shard),
kept in a side Parquet file `ROOT/dedup/minhash-images.parquet` (shard, key, signature) so that a rerun reads
them instead of decoding every image again; shards whose rows are missing or were made with other settings are
computed anew."""

from __future__ import annotations

import io
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medscale.core.errors import ShardFormatError
from medscale.core.executor import ordered_map
from medscale.core.storage import full_url, join, put_bytes_atomic
from medscale.dedup.minhash import SEED, signatures
from medscale.dedup.rehash import shard_images
from medscale.dedup.report import REPORT_DIR
from medscale.hashing.shingles import CODES_VERSION, codes_of

SIGNATURES_FILE = "minhash-images.parquet"
SIGNATURE_COST_S = 4e-4  # CPU-seconds per sample (PNG decode, codes, MinHash), for `executor: auto`


def shard_signatures(shard: str, root_url: str, storage_options: Mapping[str, Any], num_perm: int
                     ) -> Tuple[List[str], np.ndarray]:
    """(keys, `[N, num_perm]` uint32 signatures) of every sample of one shard (a Ray task)."""
    keys, images = shard_images(shard, root_url, storage_options)
    return keys, signatures(codes_of(images), num_perm)


def _settings(num_perm: int) -> Dict[bytes, bytes]:
    return {b"medscale.num_perm": str(num_perm).encode(), b"medscale.seed": str(SEED).encode(),
            b"medscale.codes_version": str(CODES_VERSION).encode()}


def _stored(fs, path: str, num_perm: int) -> Dict[str, Tuple[List[str], np.ndarray]]:
    """shard -> (keys, signatures) of the side file, if it was made with these settings."""
    if not fs.exists(path):
        return {}
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    if (table.schema.metadata or {}).get(b"medscale.codes_version") != _settings(num_perm)[b"medscale.codes_version"] \
            or (table.schema.metadata or {}).get(b"medscale.num_perm") != _settings(num_perm)[b"medscale.num_perm"]:
        return {}
    sigs = np.asarray(table["signature"].combine_chunks().flatten(), np.uint32).reshape(-1, num_perm)
    shards, keys = np.array(table["shard"].to_pylist(), object), np.array(table["key"].to_pylist(), object)
    names, which = np.unique(shards.astype(str), return_inverse=True) if len(shards) else ([], [])
    return {name: (keys[which == i].tolist(), sigs[which == i]) for i, name in enumerate(names)}


def image_signatures(fs, root: str, shards_of: np.ndarray, keys: np.ndarray, num_perm: int, executor,
                     storage_options: Mapping[str, Any], progress: bool = True) -> np.ndarray:
    """`[len(keys), num_perm]` signatures aligned to `keys` (whose shards are `shards_of`), from the side file where
    it has them and from the shards otherwise; the side file is rewritten with every shard's rows."""
    path = join(root, REPORT_DIR, SIGNATURES_FILE)
    stored = _stored(fs, path, num_perm)
    wanted = sorted(set(shards_of.tolist()))
    by_shard = {s: stored[s] for s in wanted if s in stored and set(keys[shards_of == s]) <= set(stored[s][0])}
    todo = [s for s in wanted if s not in by_shard]
    for shard, result in zip(todo, ordered_map(executor, shard_signatures, todo, full_url(fs, root),
                                               dict(storage_options), num_perm,
                                               desc="minhash", unit="shard", progress=progress)):
        by_shard[shard] = result
    if todo:
        _write(fs, path, by_shard, num_perm)
    index = {(s, k): (s, i) for s, (ks, _) in by_shard.items() for i, k in enumerate(ks)}
    out = np.empty((len(keys), num_perm), np.uint32)
    for row, (s, k) in enumerate(zip(shards_of.tolist(), keys.tolist())):
        if (s, k) not in index:
            raise ShardFormatError(f"{join(root, s)}: the manifest's sample {k!r} has no PNG member in it; the "
                                   f"shard does not match the manifest (reshard that input)")
        shard, i = index[(s, k)]
        out[row] = by_shard[shard][1][i]
    return out


def _write(fs, path: str, by_shard: Dict[str, Tuple[List[str], np.ndarray]], num_perm: int) -> None:
    shards = [s for s, (ks, _) in by_shard.items() for _ in ks]
    keys = [k for ks, _ in by_shard.values() for k in ks]
    sigs = np.concatenate([sig for _, sig in by_shard.values()]) if by_shard else np.zeros((0, num_perm), np.uint32)
    table = pa.table({"shard": shards, "key": keys, "signature": pa.FixedSizeListArray.from_arrays(
        pa.array(sigs.reshape(-1), pa.uint32()), num_perm)}).replace_schema_metadata(_settings(num_perm))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put_bytes_atomic(fs, path, buf.getvalue())
