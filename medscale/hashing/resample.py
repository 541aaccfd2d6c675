"""Pillow's 8-bit LANCZOS resize, bit for bit, on whole batches and several output sizes at once.

Two backends compute the same bits. `native` is the compiled kernel (`_lanczos.c`, built by setup.py when a C
compiler is present). `numpy` is the fallback: each pass one exact float32 matrix product
(`medscale.hashing.fixedpoint`); several output sizes share one horizontal product against the concatenated
coefficients. Both run the horizontal pass first; the sizes that the installed Pillow resizes vertical pass first
(`coefficients.vertical_first`) go through them transposed.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from medscale.hashing import native
from medscale.hashing.coefficients import vertical_first
from medscale.hashing.fixedpoint import resize_numpy

CHUNK_PIXELS = 1 << 20  # pixels resized per call where a caller stacks images: ~1 MiB of uint8, 4 MiB of float32
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
        out.update({(height, width): np.ascontiguousarray(flipped[(width, height)].transpose(0, 2, 1))
                    for height, width in transposed})
    return {size: out[size] for size in sizes}


def _resize_horizontal_first(images: np.ndarray, sizes: List[Tuple[int, int]], backend: str) -> Dict:
    if not sizes:
        return {}
    if backend != "numpy":
        out = native.resize_many_native(images, sizes)
        if out is not None:
            return out
    return resize_numpy(images, sizes, CHUNK_PIXELS)


def resize_lanczos(images: np.ndarray, height: int, width: int, backend: str = "auto") -> np.ndarray:
    """`images: [N, H, W]` uint8 -> `[N, height, width]` uint8, equal to Pillow's `resize(..., LANCZOS)` per image."""
    return resize_many(images, [(height, width)], backend)[(height, width)]
