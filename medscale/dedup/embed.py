"""Embeddings of the samples in shards from an exported backbone (Ray task per shard), for the `embedding` strategy."""

from __future__ import annotations

from typing import Any, List, Mapping, Tuple

import numpy as np

from medscale.core.card import load_backbone
from medscale.core.storage import filesystem, join
from medscale.data.shards import iter_shard
from medscale.data.png import decode_png


def preprocess(image: np.ndarray, card: Mapping[str, Any]) -> np.ndarray:
    """One stored slice -> `[C, S, S]` float32, resized to the card's image size and normalised with its mean/std."""
    from PIL import Image

    size, chans = int(card["image_size"]), int(card.get("in_chans", 3))
    arr = image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3 if chans == 3 else 1, axis=-1)
    if chans == 1 and arr.shape[-1] == 3:
        arr = arr.mean(axis=-1, keepdims=True)
    planes = [np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.BICUBIC)) for c in range(chans)]
    x = np.stack(planes)
    mean = np.asarray(card["mean"], np.float32).reshape(-1, 1, 1)[:chans]
    std = np.asarray(card["std"], np.float32).reshape(-1, 1, 1)[:chans]
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
