"""Pillow's fixed-point LANCZOS coefficients, rebuilt exactly as Pillow's `Resample.c` computes them."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8 bits per channel
_LANCZOS_SUPPORT = 3.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


@lru_cache(maxsize=256)
def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point LANCZOS coefficients as a dense `[out_size, in_size]` int64 matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    matrix = np.zeros((out_size, in_size), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = sum(weights)  # summed in the same order as Pillow, so the division rounds the same
        for x, w in enumerate(weights):
            w = w / total if total != 0.0 else w
            matrix[xx, xmin + x] = int(-0.5 + w * (1 << PRECISION_BITS)) if w < 0 else int(
                0.5 + w * (1 << PRECISION_BITS))
    return matrix


def pass_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out_size, in_size]` int64 coefficients of one pass; an unchanged size is the identity (2**22 on the
    diagonal), which Pillow's rounding returns unchanged."""
    if in_size == out_size:
        return np.eye(in_size, dtype=np.int64) << PRECISION_BITS
    return resample_matrix(in_size, out_size)


def _round8(sums: np.ndarray) -> np.ndarray:
    """Pillow's `clip8((acc + 2**21) >> 22)` on exact integer sums held in float64."""
    return np.clip(np.floor((sums + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)), 0, 255)


def reference_resize(image: np.ndarray, height: int, width: int, vertical_first: bool = False) -> np.ndarray:
    """`image: [H, W]` uint8 -> `[height, width]` uint8 by Pillow's LANCZOS arithmetic, one pass after the other.

    Plain float64 products (every partial sum is an integer far below 2**53, so exact): the slow, obvious
    version that the batched kernels are checked against.
    """
    h, w = image.shape
    horizontal = pass_matrix(w, width).astype(np.float64).T  # [W, width]
    vertical = pass_matrix(h, height).astype(np.float64)  # [height, H]
    x = image.astype(np.float64)
    if vertical_first:
        return _round8(_round8(vertical @ x) @ horizontal).astype(np.uint8)
    return _round8(vertical @ _round8(x @ horizontal)).astype(np.uint8)


@lru_cache(maxsize=1024)
def vertical_first(in_height: int, in_width: int, height: int, width: int) -> bool:
    """Whether the installed Pillow resizes `[in_height, in_width]` to `[height, width]` vertical pass first.

    Pillow rounds to 8 bits between its two passes, so their order changes the result. Older Pillow always ran
    the horizontal pass first; Pillow 13 picks the order from the shapes. Rather than copy one version's rule,
    ask the installed Pillow once per shape with a noise image, on which the two orders disagree.
    """
    if in_height == height or in_width == width:
        return False  # one pass only
    from PIL import Image

    rng = np.random.default_rng(0)
    for _ in range(4):
        probe = rng.integers(0, 256, (in_height, in_width), dtype=np.uint8)
        pillow = np.asarray(Image.fromarray(probe).resize((width, height), Image.Resampling.LANCZOS))
        h_first = np.array_equal(reference_resize(probe, height, width), pillow)
        v_first = np.array_equal(reference_resize(probe, height, width, vertical_first=True), pillow)
        if h_first != v_first:
            return v_first
        if not h_first:
            raise RuntimeError(f"Pillow {Image.__version__}'s LANCZOS resize of {in_height}x{in_width} to "
                               f"{height}x{width} is neither pass order of Pillow's arithmetic; hashes would "
                               "not match imagehash. Please report this Pillow version.")
    return False  # the orders agree on every probe: either is right
