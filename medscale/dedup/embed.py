"""Embeddings of the samples in shards from an exported backbone (Ray task per shard), for the `embedding` strategy."""

from __future__ import annotations

import io
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medscale.core.card import Card, load_backbone
from medscale.core.errors import InputError
from medscale.core.executor import ordered_map
from medscale.core.storage import filesystem, full_url, join, put_bytes_atomic
from medscale.data.png import decode_png
from medscale.data.shards import iter_shard
from medscale.dedup.config import DedupConfig
from medscale.dedup.report import REPORT_DIR

EMBED_COST_S = 2e-2  # CPU-seconds per sample through a small backbone, for `executor: auto`


def preprocess(image: np.ndarray, card: Card) -> np.ndarray:
    """One stored slice -> `[C, S, S]` float32, resized to the card's image size and normalised with its mean/std."""
    from PIL import Image

    size, chans = card.image_size, card.in_chans
    arr = image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3 if chans == 3 else 1, axis=-1)
    if chans == 1 and arr.shape[-1] == 3:
        arr = arr.mean(axis=-1, keepdims=True)
    planes = [np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.BICUBIC)) for c in range(chans)]
    x = np.stack(planes)
    mean = np.asarray(card.mean, np.float32).reshape(-1, 1, 1)[:chans]
    std = np.asarray(card.std, np.float32).reshape(-1, 1, 1)[:chans]
    return (x - mean) / std


def embed_shard(shard: str, root_url: str, backbone: str, storage_options: Mapping[str, Any],
                batch: int = 64) -> Tuple[List[str], np.ndarray]:
    """(keys, `[N, D]` float32 embeddings) of every sample of one shard: the backbone's pooled features."""
    import torch

    torch.set_num_threads(1)  # one task per core
    model, card = load_backbone(backbone)
    fs, root = filesystem(root_url, storage_options)
    keys, out, pending = [], [], []
    with fs.open(join(root, shard), "rb") as fh, torch.inference_mode():
        for key, members in iter_shard(fh, shard):
            if "png" not in members:
                continue
            keys.append(key)
            pending.append(preprocess(decode_png(members["png"]), card))
            if len(pending) == batch:
                out.append(model.forward_head(model.forward_features(torch.from_numpy(np.stack(pending))),
                                              pre_logits=True).float().numpy())
                pending = []
        if pending:
            out.append(model.forward_head(model.forward_features(torch.from_numpy(np.stack(pending))),
                                          pre_logits=True).float().numpy())
    return keys, (np.concatenate(out) if out else np.zeros((0, 0), np.float32))


def load_embeddings(url: str, keys: np.ndarray, storage_options: Dict[str, Any]) -> np.ndarray:
    """`[N, D]` float32 rows of a Parquet file (`key`, `embedding`) aligned to `keys`; every key must be there."""
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"embeddings file {url} does not exist; pass a Parquet file with columns key, embedding")
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    missing_cols = {"key", "embedding"} - set(table.column_names)
    if missing_cols:
        raise InputError(f"{url}: missing column(s) {sorted(missing_cols)}; expected key (string) and "
                         f"embedding (list of floats)")
    try:
        matrix = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{url}: column 'embedding' must hold equal-length lists of floats ({exc})") from exc
    index = {k: i for i, k in enumerate(table["key"].to_pylist())}
    missing = [k for k in keys if k not in index]
    if missing:
        raise InputError(f"{url}: no embedding for {len(missing)} of {len(keys)} samples (e.g. {missing[0]!r}); "
                         "compute embeddings for every kept sample of the manifest")
    return matrix[[index[k] for k in keys]]


def embed_corpus(fs, root: str, shards: List[str], cfg: DedupConfig, executor) -> str:
    """Embed every sample of `shards` with `cfg.backbone` (Ray task per shard); write and return
    `ROOT/dedup/embeddings.parquet` (key, embedding)."""
    keys: List[str] = []
    parts = []
    for shard_keys, vectors in ordered_map(executor, embed_shard, shards, full_url(fs, root), cfg.backbone,
                                           cfg.storage_options, desc="embed", unit="shard", progress=cfg.progress):
        keys.extend(shard_keys)
        parts.append(vectors)
    matrix = np.concatenate(parts)
    table = pa.table({"key": keys, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1])})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = join(root, REPORT_DIR, "embeddings.parquet")
    put_bytes_atomic(fs, path, buf.getvalue())
    return full_url(fs, path)
