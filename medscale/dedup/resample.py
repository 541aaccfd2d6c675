"""Pillow's 8-bit LANCZOS resize, bit for bit, on whole batches and several output sizes at once.

Two backends compute the same bits. `native` is the compiled kernel (`_lanczos.c`, built by setup.py when a C
compiler is present). `numpy` is the fallback: each pass one exact float32 matrix product
(`medscale.dedup.fixedpoint`); several output sizes share one horizontal product against the concatenated
coefficients. Both run the horizontal pass first; the sizes that the installed Pillow resizes vertical pass first
(`coefficients.vertical_first`) go through them transposed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

from medscale.dedup import native
from medscale.dedup.coefficients import resample_matrix, vertical_first
from medscale.dedup.fixedpoint import combine_limbs, split_limbs

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


BACKENDS = ("auto", "native", "numpy")


def resize_many(images: np.ndarray, sizes: Sequence[Tuple[int, int]],
                backend: str = "auto") -> Dict[Tuple[int, int], np.ndarray]:
    """`images: [N, H, W]` uint8 -> `{(height, width): [N, height, width]}`, each equal to Pillow's
    `resize((width, height), LANCZOS)` per image. `backend`: "auto" (native when built), "native" or "numpy"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown resize backend {backend!r}; choose one of {BACKENDS}")
    if backend == "native" and not native.available():
        raise RuntimeError("the compiled LANCZOS kernel was not built (no C compiler at install time?); "
                           "reinstall with gcc present, or use backend='numpy'")
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected [N, H, W] uint8 images, got {images.dtype} {images.shape}")
    n, h, w = images.shape
    sizes = list(dict.fromkeys((int(height), int(width)) for height, width in sizes))  # each size once
    transposed = [size for size in sizes if vertical_first(h, w, *size)]
    out = _resize_horizontal_first(images, [size for size in sizes if size not in transposed], backend)
    if transposed:  # a vertical-first resize is a horizontal-first one of the transposed images
        flipped = _resize_horizontal_first(np.ascontiguousarray(images.transpose(0, 2, 1)),
                                           [(width, height) for height, width in transposed], backend)
        out.update({(height, width): flipped[(width, height)].transpose(0, 2, 1) for height, width in transposed})
    return {size: out[size] for size in sizes}


def _resize_horizontal_first(images: np.ndarray, sizes: List[Tuple[int, int]], backend: str) -> Dict:
    if not sizes:
        return {}
    if backend != "numpy":
        out = native.resize_many_native(images, sizes)
        if out is not None:
            return out
    return _resize_numpy(images, sizes)


def _resize_numpy(images: np.ndarray, sizes: List[Tuple[int, int]]) -> Dict[Tuple[int, int], np.ndarray]:
    """The numpy backend: Pillow resamples horizontally, rounds to 8 bits, then vertically. Here the horizontal
    passes of all widths are one product, and so are the vertical passes of all sizes that share a height."""
    n, h, w = images.shape
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


def resize_lanczos(images: np.ndarray, height: int, width: int, backend: str = "auto") -> np.ndarray:
    """`images: [N, H, W]` uint8 -> `[N, height, width]` uint8, equal to Pillow's `resize(..., LANCZOS)` per image."""
    return resize_many(images, [(height, width)], backend)[(height, width)]
