"""The compiled LANCZOS kernel (`_lanczos.c`): Pillow's coefficients laid out for it, and the call.

The horizontal pass takes each output column's own filter window (a list of columns, any widths mixed); the
vertical pass takes blocks of 8 output rows, each block over the span its rows touch. Columns are grouped by output
height, so every height's vertical pass reads one contiguous run of them. Horizontal pass first, always: `resample`
transposes the images for the sizes that Pillow resizes vertical pass first.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from medscale.hashing.coefficients import PRECISION_BITS, pass_matrix

try:
    from medscale.hashing import _lanczos
except ImportError:  # built without a C compiler: `resample` falls back to the numpy path
    _lanczos = None

LANES = 8
_INT32 = 1 << 31


def available() -> bool:
    """Whether the compiled kernel was built (setup.py builds it when a C compiler is present)."""
    return _lanczos is not None


def levels() -> Tuple[int, ...]:
    """Instruction-set levels this CPU runs the kernel at: 1 baseline, 3 x86-64-v3 (AVX2), 4 x86-64-v4 (AVX-512).
    Every level computes the same bits; `level=0` (the default everywhere) picks the best."""
    return _lanczos.levels() if _lanczos is not None else ()


def _windows(matrix: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """`[O, K]` coefficients -> (start, stop) of each row's nonzero span."""
    nonzero = matrix != 0
    start = np.where(nonzero.any(1), nonzero.argmax(1), 0)
    stop = np.where(nonzero.any(1), matrix.shape[1] - nonzero[:, ::-1].argmax(1), 0)
    if (255 * np.abs(matrix).sum(1) + (1 << (PRECISION_BITS - 1)) >= _INT32).any():
        raise ValueError("LANCZOS sums would overflow Pillow's int32 accumulator")
    return start, stop


class _Vertical(NamedTuple):
    height: int
    first: int  # first horizontal column this height reads
    columns: Dict[int, int]  # width -> its first column, relative to `first`
    count: int  # columns read
    start: np.ndarray  # int32 [B]: first input row of each block of 8 output rows
    taps: np.ndarray  # int32 [B]
    coef: np.ndarray  # float64 [sum(taps), 8]


class _Plan(NamedTuple):
    hstart: np.ndarray  # int32 [P]: the horizontal pass in pairs of output columns
    htaps: np.ndarray  # int32 [P]
    hcoef: np.ndarray  # float64 [sum(htaps), 2]
    vertical: Tuple[_Vertical, ...]


def _groups(matrix: np.ndarray, size: int) -> Tuple[List[int], List[int], List[np.ndarray]]:
    """`[O, K]` coefficients -> per group of `size` consecutive outputs: (start, taps, coef [taps, size]) over the
    union of their windows. A short last group is padded with all-zero outputs, which nothing reads."""
    start, stop = _windows(matrix)
    starts, taps, coef = [], [], []
    for g in range(0, len(matrix), size):
        lo, hi = int(start[g:g + size].min()), int(stop[g:g + size].max())
        group = np.zeros((hi - lo, size))
        group[:, :len(matrix[g:g + size])] = matrix[g:g + size, lo:hi].T
        starts.append(lo), taps.append(hi - lo), coef.append(group)
    return starts, taps, coef


@lru_cache(maxsize=64)
def _plan(height: int, width: int, sizes: Tuple[Tuple[int, int], ...]) -> _Plan:
    hstart: List[int] = []
    htaps: List[int] = []
    hcoef: List[np.ndarray] = []
    vertical = []
    for out_h in sorted({h for h, _ in sizes}):
        first, columns = 2 * len(hstart), {}
        for out_w in sorted({w for h, w in sizes if h == out_h}):
            columns[out_w] = 2 * len(hstart) - first
            starts, taps, coef = _groups(pass_matrix(width, out_w), 2)  # the kernel takes columns in pairs
            hstart += starts
            htaps += taps
            hcoef += coef
        vstart, vtaps, vcoef = _groups(pass_matrix(height, out_h), LANES)  # and output rows in blocks of 8
        vertical.append(_Vertical(out_h, first, columns, 2 * len(hstart) - first, np.array(vstart, np.int32),
                                  np.array(vtaps, np.int32), np.concatenate(vcoef)))
    return _Plan(np.array(hstart, np.int32), np.array(htaps, np.int32), np.concatenate(hcoef), tuple(vertical))


def resize_many_native(images: np.ndarray, sizes: Sequence[Tuple[int, int]], level: int = 0) -> Optional[Dict]:
    """`images: [N, H, W]` uint8 -> `{(height, width): [N, height, width]}`, horizontal pass first, via the compiled
    kernel; None when it was not built or cannot take these sizes."""
    if _lanczos is None:
        return None
    n, h, w = images.shape
    sizes = tuple(dict.fromkeys(tuple(s) for s in sizes))
    try:
        plan = _plan(h, w, sizes)
    except ValueError:
        return None
    outs = [np.empty((n, v.count, len(v.start) * LANES), np.uint8) for v in plan.vertical]
    _lanczos.resize(np.ascontiguousarray(images, np.uint8), n, h, w, plan.hstart, plan.htaps, plan.hcoef,
                    [(v.first, v.count, v.start, v.taps, v.coef, out) for v, out in zip(plan.vertical, outs)], level)
    by_height = {v.height: (v, out) for v, out in zip(plan.vertical, outs)}
    result = {}
    for out_h, out_w in sizes:  # the kernel writes [N, columns, rows]; callers get C-ordered [N, rows, columns]
        v, out = by_height[out_h]
        result[(out_h, out_w)] = np.ascontiguousarray(
            out[:, v.columns[out_w]:v.columns[out_w] + out_w, :out_h].transpose(0, 2, 1))
    return result


def phash_low_native(pixels: np.ndarray, dct_rows: np.ndarray,
                     level: int = 0) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """`pixels: [N, S, S]` uint8, `dct_rows: [8, S]` -> (`[N, 64]` corner of the 2D DCT `D X D^T`, `[N]` median
    of each corner), or None when the kernel was not built."""
    if _lanczos is None:
        return None
    n, s, _ = pixels.shape
    low, median = np.empty((n, 64)), np.empty(n)
    _lanczos.phash_low(np.ascontiguousarray(pixels, np.uint8), n, s, np.ascontiguousarray(dct_rows.T), low, median,
                       level)
    return low, median
