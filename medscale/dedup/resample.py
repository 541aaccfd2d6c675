"""Pillow's 8-bit LANCZOS resize, bit for bit, on whole batches: the fixed-point coefficients rebuilt once per
(input size, output size), each pass one float32 matrix product with exact float64 fix-ups near rounding ties.

Several output sizes of the same images share one horizontal pass (one product against the concatenated
coefficients), which is how `hash_images` gets aHash, dHash and pHash for little more than the cost of one.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np

_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8 bits per channel
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
            matrix[xx, xmin + x] = int(-0.5 + w * (1 << _PRECISION_BITS)) if w < 0 else int(
                0.5 + w * (1 << _PRECISION_BITS))
    return matrix


def _round_clip(acc: np.ndarray) -> np.ndarray:
    """Exact integer accumulators -> Pillow's `clip8((acc + 2**21) >> 22)`."""
    return np.clip((acc.astype(np.int64) + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255)


_CHUNK_PIXELS = 1 << 20  # pixels per chunk: the chunk's float32 copy (4 MiB) stays in cache


@lru_cache(maxsize=256)
def _pass_operands(in_size: int, out_sizes: Tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    """(exact float64 `[in, sum(out)]`, float32 scaled by 2**-22, float32 error bound in output units) for the
    coefficients of every output size, side by side."""
    matrix = np.concatenate([resample_matrix(in_size, out) for out in out_sizes])
    exact = np.ascontiguousarray(matrix.T, dtype=np.float64)
    scaled = (exact / (1 << _PRECISION_BITS)).astype(np.float32)  # exact: coefficients are integers < 2**23
    # bound of a float32 dot product of n nonzero terms (zeros add exactly): n * 2**-24 * sum|x * c|, plus the + 0.5
    taps = int((matrix != 0).sum(axis=1).max())
    worst = 255 * np.abs(matrix).sum(axis=1).max() / (1 << _PRECISION_BITS)
    return exact, scaled, (taps + 2) * 2.0 ** -24 * worst + 2.0 ** -14


def _resample_rows(rows: np.ndarray, in_size: int, out_sizes: Tuple[int, ...]) -> np.ndarray:
    """`rows: [R, in_size]` uint8 -> `[R, sum(out_sizes)]` uint8, exactly as Pillow's LANCZOS pass rounds each.

    A float32 product first; the outputs that lie within its worst-case error of a rounding boundary are
    recomputed in float64, which is exact here (every partial sum is an integer below 2**39).
    """
    exact, scaled, tolerance = _pass_operands(in_size, tuple(out_sizes))
    out_size = exact.shape[1]
    if tolerance > 0.05:  # very wide images: too many outputs would be unsure, go straight to float64
        return _round_clip(rows.astype(np.float64) @ exact).astype(np.uint8)
    approx = rows.astype(np.float32) @ scaled
    approx += np.float32(0.5)
    floor = np.floor(approx)
    approx -= floor  # the fractional part: unsure when within tolerance of 0 or 1
    approx -= np.float32(0.5)
    np.abs(approx, out=approx)
    unsure = np.flatnonzero(approx >= np.float32(0.5 - tolerance))
    np.maximum(floor, 0, out=floor)
    np.minimum(floor, 255, out=floor)
    out = floor.astype(np.uint8)
    if len(unsure):
        r, c = np.divmod(unsure, out_size)
        sums = np.einsum("ij,ji->i", rows[r].astype(np.float64), exact[:, c])
        out.reshape(-1)[unsure] = _round_clip(sums)
    return out


def resize_many(images: np.ndarray, sizes: Sequence[Tuple[int, int]]) -> Dict[Tuple[int, int], np.ndarray]:
    """`images: [N, H, W]` uint8 -> `{(height, width): [N, height, width]}`, each equal to Pillow's
    `resize((width, height), LANCZOS)` per image; the horizontal passes of all sizes are one product."""
    n, h, w = images.shape
    widths = tuple(sorted({width for _, width in sizes if width != w}))
    starts = dict(zip(widths, np.cumsum((0,) + widths[:-1]))) if widths else {}
    chunk = max(1, _CHUNK_PIXELS // max(1, h * w))
    parts: Dict[Tuple[int, int], List[np.ndarray]] = {tuple(size): [] for size in sizes}
    for start in range(0, n, chunk):  # Pillow: horizontal pass first, then vertical, each rounded to 8 bits
        x = images[start:start + chunk]
        wide = _resample_rows(x.reshape(-1, w), w, widths) if widths else None
        for height, width in parts:
            y = x if width == w else wide[:, starts[width]:starts[width] + width].reshape(len(x), h, width)
            if height != h:  # the vertical pass as a row pass over the transposed chunk
                cols = np.ascontiguousarray(y.transpose(0, 2, 1)).reshape(-1, h)
                y = _resample_rows(cols, h, (height,)).reshape(len(x), width, height).transpose(0, 2, 1)
            parts[(height, width)].append(np.ascontiguousarray(y, dtype=np.uint8))
    return {size: (np.concatenate(p) if p else np.zeros((0,) + size, np.uint8)) for size, p in parts.items()}


def resize_lanczos(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """`images: [N, H, W]` uint8 -> `[N, height, width]` uint8, equal to Pillow's `resize(..., LANCZOS)` per image."""
    return resize_many(images, [(height, width)])[(height, width)]
