"""Pillow's fixed-point resampling arithmetic, done exactly by float matrix products.

Pillow's 8-bit LANCZOS pass sums `pixel * k` with integer coefficients `k` (|k| < 2**23) and rounds as
`clip8((acc + 2**21) >> 22)`. Such sums need ~31 bits, more than float32 holds, so each coefficient is split into
two limbs, `k = 256 * hi + lo` with `lo` in [-128, 127]. Every partial sum of `pixel * hi` and of `pixel * lo` is
then an integer below 2**24 in magnitude: float32 represents all of them, so a BLAS product (in any summation order)
returns both sums exactly, and `combine_limbs` rounds `256 * hi_sum + lo_sum` as Pillow does.

This is the numpy backend of `resample`, used where the compiled kernel (`_lanczos.c`) was not built.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8 bits per channel
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
