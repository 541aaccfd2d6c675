"""A PNG grid of what a trainer will see: one batch of a loader, de-normalised (each view of a sample on a row)."""

from __future__ import annotations

import io
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from medscale.data.augment import IMAGENET_MEAN, IMAGENET_STD


def _to_uint8(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """`[C, H, W]` normalised -> `[H, W, 3]` uint8."""
    c = image.shape[0]
    x = image.float() * torch.tensor(std[:c]).view(-1, 1, 1) + torch.tensor(mean[:c]).view(-1, 1, 1)
    x = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(x, 3, axis=2) if c == 1 else x


def batch_grid(batch: Dict[str, Any], samples: int = 8, mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD, tile: int = 128) -> bytes:
    """PNG bytes: a row per sample (its key under it), one column per view (`image` or `views`)."""
    views: List[torch.Tensor] = batch["views"] if "views" in batch else [batch["image"]]
    rows = min(samples, len(batch["key"]))
    sheet = Image.new("RGB", (tile * len(views), (tile + 14) * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for r in range(rows):
        for c, view in enumerate(views):
            img = Image.fromarray(_to_uint8(view[r], mean, std)).resize((tile, tile), Image.BICUBIC)
            sheet.paste(img, (c * tile, r * (tile + 14)))
        label = int(batch["label"][r]) if "label" in batch else -1
        draw.text((2, r * (tile + 14) + tile), f"{batch['key'][r]} label {label}"[:40], fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
