"""Intensity mapping and resizing of one 2D slice into the 8- or 16-bit pixels a shard stores."""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image


def scale_intensity(pixels: np.ndarray, window_center: Optional[float] = None,
                    window_width: Optional[float] = None, display_max: Optional[float] = None) -> np.ndarray:
    """Grey `pixels: [H, W]` to float32 in [0, 1].

    Display images (PNG/JPEG/npz) pass `display_max` (255 or 65535) and keep their values; physical values
    (HU for CT, MR signal) use the given window, else this slice's min-max, as the Less-is-More preprocessing does.
    A constant slice maps to 0.
    """
    x = pixels.astype(np.float32, copy=False)
    if display_max is not None:
        return np.clip(x * (1.0 / display_max), 0.0, 1.0)
    if window_width is not None and window_center is not None:
        lo = window_center - window_width / 2.0
        hi = window_center + window_width / 2.0
    else:
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.float32)
    out = (x - lo) * (1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def resized_shape(height: int, width: int, max_size: Optional[int]) -> tuple[int, int]:
    """(H, W) with the longer side at most `max_size`, aspect ratio kept; unchanged when already small enough."""
    if max_size is None or max(height, width) <= max_size:
        return height, width
    scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def quantize(unit: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float pixels in [0, 1] to uint8 or uint16 (rounded)."""
    top = 255.0 if bit_depth == 8 else 65535.0
    return np.rint(unit * top).astype(np.uint8 if bit_depth == 8 else np.uint16)


def grey_to_output(pixels: np.ndarray, bit_depth: int, max_size: Optional[int] = None,
                   window_center: Optional[float] = None, window_width: Optional[float] = None,
                   display_max: Optional[float] = None) -> np.ndarray:
    """Grey `pixels: [H, W]` -> scaled, resized (bicubic on floats, so 16-bit keeps its precision), quantized."""
    if display_max == 255 and bit_depth == 8 and pixels.dtype == np.uint8:
        h, w = resized_shape(*pixels.shape, max_size)
        if (h, w) == pixels.shape:
            return pixels  # already what the shard stores: skip the float round trip
    unit = scale_intensity(pixels, window_center, window_width, display_max)
    h, w = resized_shape(*unit.shape, max_size)
    if (h, w) != unit.shape:
        unit = np.asarray(Image.fromarray(unit, mode="F").resize((w, h), Image.BICUBIC))
        unit = np.clip(unit, 0.0, 1.0)
    return quantize(unit, bit_depth)


def colour_to_output(pixels: np.ndarray, max_size: Optional[int] = None) -> np.ndarray:
    """Colour `pixels: [H, W, 3]` (any int/float dtype) -> uint8 RGB, resized; colour is always 8-bit."""
    if pixels.dtype != np.uint8:
        pixels = quantize(scale_intensity(pixels), 8)
    h, w = resized_shape(pixels.shape[0], pixels.shape[1], max_size)
    if (h, w) != pixels.shape[:2]:
        pixels = np.asarray(Image.fromarray(pixels, mode="RGB").resize((w, h), Image.BICUBIC))
    return pixels
