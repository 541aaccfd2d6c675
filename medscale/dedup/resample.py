"""Pillow's 8-bit LANCZOS resize, bit for bit, on whole batches: the fixed-point coefficients rebuilt once per
(input size, output size), each pass one exact float32 matrix product (`medscale.dedup.fixedpoint`).

Several output sizes of the same images share one horizontal pass (one product against the concatenated
coefficients), which is how `hash_images` gets aHash, dHash and pHash for little more than the cost of one.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

from medscale.dedup.fixedpoint import PRECISION_BITS, combine_limbs, split_limbs

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


CHUNK_PIXELS = 1 << 20  # pixels resampled together: the chunk's float32 copy (4 MiB) stays in cache


class _PassPlan(NamedTuple):
    """One resampling pass from `in_size` to the concatenated `out_sizes`: Pillow's coefficients split into limbs."""

    limbs: np.ndarray  # [in, 2 * O]: the hi limbs of every output, then the lo limbs (see `fixedpoint`)
    outputs: int  # O


@lru_cache(maxsize=256)
def _pass_plan(in_size: int, out_sizes: Tuple[int, ...]) -> _PassPlan:
    coef = np.concatenate([resample_matrix(in_size, out) for out in out_sizes])
    hi, lo, dtype = split_limbs(coef)
    return _PassPlan(np.ascontiguousarray(np.concatenate([hi, lo]).T, dtype=dtype), len(coef))


def _horizontal(x: np.ndarray, out_sizes: Tuple[int, ...]) -> np.ndarray:
    """`x: [N, H, W]` uint8 -> `[H, N, sum(out_sizes)]` uint8: Pillow's horizontal pass of every output width.

    The rows enter the product ordered by (y, image), so the result is already laid out for the vertical product.
    """
    n, h, w = x.shape
    plan = _pass_plan(w, out_sizes)
    rows = np.empty((h, n, w), plan.limbs.dtype)
    np.copyto(rows, x.transpose(1, 0, 2))
    sums = rows.reshape(h * n, w) @ plan.limbs  # [H * N, 2 * O], exact
    out = np.empty((h * n, plan.outputs), np.uint8)
    combine_limbs(sums, out)
    return out.reshape(h, n, plan.outputs)


def _vertical(cols: np.ndarray, height: int) -> np.ndarray:
    """`cols: [H, N, C]` uint8 -> `[N, C, height]` uint8: Pillow's vertical pass, one product for all columns."""
    h, n, c = cols.shape
    plan = _pass_plan(h, (height,))
    sums = cols.astype(plan.limbs.dtype).reshape(h, n * c).T @ plan.limbs  # [N * C, 2 * height], exact
    out = np.empty((n * c, height), np.uint8)
    combine_limbs(sums, out)
    return out.reshape(n, c, height)


def resize_many(images: np.ndarray, sizes: Sequence[Tuple[int, int]]) -> Dict[Tuple[int, int], np.ndarray]:
    """`images: [N, H, W]` uint8 -> `{(height, width): [N, height, width]}`, each equal to Pillow's
    `resize((width, height), LANCZOS)` per image.

    Pillow resamples horizontally, rounds to 8 bits, then vertically. Here the horizontal passes of all widths are
    one product, and so are the vertical passes of all sizes that share a height.
    """
    n, h, w = images.shape
    sizes = list(dict.fromkeys(tuple(size) for size in sizes))  # a size asked twice is computed once
    widths = tuple(sorted({width for _, width in sizes if width != w}))
    column = dict(zip(widths, np.cumsum((0,) + widths[:-1]).tolist()))
    chunk = max(1, CHUNK_PIXELS // max(1, h * w))
    parts: Dict[Tuple[int, int], List[np.ndarray]] = {size: [] for size in sizes}
    for first in range(0, n, chunk):
        x = images[first:first + chunk]
        wide = _horizontal(x, widths) if widths else None  # [H, n, sum(widths)]
        for height in sorted({height for height, _ in sizes}):
            group = [width for hh, width in sizes if hh == height]
            pieces = [x.transpose(1, 0, 2) if width == w else wide[:, :, column[width]:column[width] + width]
                      for width in group]
            cols = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=2)  # [H, n, sum(group)]
            # [n, height, sum(group)]
            tall = cols.transpose(1, 0, 2) if height == h else _vertical(cols, height).transpose(0, 2, 1)
            offset = 0
            for width in group:
                parts[(height, width)].append(np.ascontiguousarray(tall[:, :, offset:offset + width]))
                offset += width
    return {size: (p[0] if len(p) == 1 else np.concatenate(p) if p else np.zeros((0,) + size, np.uint8))
            for size, p in parts.items()}


def resize_lanczos(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """`images: [N, H, W]` uint8 -> `[N, height, width]` uint8, equal to Pillow's `resize(..., LANCZOS)` per image."""
    return resize_many(images, [(height, width)])[(height, width)]
