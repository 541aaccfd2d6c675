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


def _fitted(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """`text`, its start cut (marked "...") until it fits `width` pixels: a key's distinctive end stays."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength("..." + text) > width:
        text = text[1:]
    return "..." + text


def batch_grid(batch: Dict[str, Any], samples: int = 8, mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD, tile: int = 128) -> bytes:
    """PNG bytes: each sample a block of its views side by side (`image`, or every one of `views`) with its key
    and label under them, as many blocks to a row as make about four tiles."""
    views: List[torch.Tensor] = batch["views"] if "views" in batch else [batch["image"]]
    count = min(samples, len(batch["key"]))
    per_row = max(1, 4 // len(views))
    block_w, block_h, pad = tile * len(views), tile + 30, 6
    rows = -(-count // per_row)
    sheet = Image.new("RGB", (per_row * (block_w + pad) + pad, rows * (block_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(count):
        x, y = pad + (i % per_row) * (block_w + pad), pad + (i // per_row) * (block_h + pad)
        for c, view in enumerate(views):
            img = Image.fromarray(_to_uint8(view[i], mean, std)).resize((tile, tile), Image.BICUBIC)
            sheet.paste(img, (x + c * tile, y))
        label = int(batch["label"][i]) if "label" in batch else -1
        draw.text((x + 2, y + tile + 2), _fitted(draw, str(batch["key"][i]), block_w - 4), fill="black")
        draw.text((x + 2, y + tile + 15), "no label" if label < 0 else f"label {label}", fill=(90, 90, 90))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
