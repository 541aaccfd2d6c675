"""Pillow's fixed-point resampling arithmetic, done exactly by float matrix products.

Pillow's 8-bit LANCZOS pass sums `pixel * k` with integer coefficients `k` (|k| < 2**23) and rounds as
`clip8((acc + 2**21) >> 22)`. Such sums need ~31 bits, more than float32 holds, so each coefficient is split into
two limbs, `k = 256 * hi + lo` with `lo` in [-128, 127]. Every partial sum of `pixel * hi` and of `pixel * lo` is
then an integer below 2**24 in magnitude: float32 represents all of them, so a BLAS product (in any summation order)
returns both sums exactly, and `combine_limbs` rounds `256 * hi_sum + lo_sum` as Pillow does.

This is the numpy backend of `resample`, used where the compiled kernel (`_lanczos.c`) was not built.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, NamedTuple, Tuple

import numpy as np

from medscale.hashing.coefficients import PRECISION_BITS, resample_matrix

_EXACT_FLOAT32 = 1 << 24  # float32 holds every integer of smaller magnitude
_HALF = 1 << (PRECISION_BITS - 1)  # Pillow's rounding offset


def split_limbs(coef: np.ndarray) -> Tuple[np.ndarray, np.ndarray, type]:
    """`coef: [O, K]` int64 -> (hi, lo, dtype): `coef == 256 * hi + lo`, and the float type in which products of
    uint8 pixels with either limb are exact (float32, or float64 for inputs so wide that the sums outgrow 2**24)."""
    lo = (coef + 128) % 256 - 128
    hi = (coef - lo) >> 8
    worst = 255 * max(np.abs(hi).sum(axis=1).max(initial=0), np.abs(lo).sum(axis=1).max(initial=0))
    return hi, lo, (np.float32 if worst < _EXACT_FLOAT32 else np.float64)


def combine_limbs(sums: np.ndarray, out: np.ndarray) -> None:
    """`sums: [R, 2 * O]` exact limb sums (the O hi sums, then the O lo sums) -> `out: [R, O]` uint8, Pillow's
    `clip8((256 * hi + lo + 2**21) >> 22)`."""
    outputs = out.shape[1]
    acc = (sums[:, :outputs].astype(np.int64) << 8) + sums[:, outputs:].astype(np.int64) + _HALF
    np.clip(acc >> PRECISION_BITS, 0, 255, out=acc)
    out[...] = acc


class _PassPlan(NamedTuple):
    """One resampling pass from `in_size` to the concatenated `out_sizes`: Pillow's coefficients split into limbs."""

    limbs: np.ndarray  # [in, 2 * O]: the hi limbs of every output, then the lo limbs (see `split_limbs`)
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


def resize_numpy(images: np.ndarray, sizes: List[Tuple[int, int]],
                 chunk_pixels: int) -> Dict[Tuple[int, int], np.ndarray]:
    """`images: [N, H, W]` uint8 -> `{(height, width): [N, height, width]}`, horizontal pass first, `chunk_pixels`
    at a time. Pillow resamples horizontally, rounds to 8 bits, then vertically. Here the horizontal passes of all
    widths are one product, and so are the vertical passes of all sizes that share a height."""
    n, h, w = images.shape
    widths = tuple(sorted({width for _, width in sizes if width != w}))
    column = dict(zip(widths, np.cumsum((0,) + widths[:-1]).tolist()))
    chunk = max(1, chunk_pixels // max(1, h * w))
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
