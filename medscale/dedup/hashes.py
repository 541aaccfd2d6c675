"""Batched perceptual hashes (aHash, dHash, pHash), bit-identical to the `imagehash` library on the same pixels.

imagehash resizes each image with Pillow's LANCZOS filter, whose 8-bit path uses fixed-point coefficients;
this module rebuilds those exact integer coefficients once per (input size, output size) and applies them to a
whole batch as two integer matrix products, so hashing a batch costs a few numpy calls instead of N Pillow calls.
"""

from __future__ import annotations

import math
from functools import lru_cache

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


def _clip8(acc: np.ndarray) -> np.ndarray:
    return np.clip((acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255)


def resize_lanczos(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """`images: [N, H, W]` uint8 -> `[N, height, width]` uint8, equal to Pillow's `resize(..., LANCZOS)` per image."""
    # float64 BLAS products are exact here: every product and partial sum is an integer below 2**39 < 2**53
    x = images.astype(np.float64)
    n, h, w = x.shape
    if width != w:  # Pillow: horizontal pass first, then vertical, each rounded and clipped to 8 bits
        x = _clip8((x @ resample_matrix(w, width).T.astype(np.float64)).astype(np.int64)).astype(np.float64)
    if height != h:
        x = _clip8((resample_matrix(h, height).astype(np.float64) @ x).astype(np.int64))
    return x.astype(np.uint8)


def to_grey(images: np.ndarray) -> np.ndarray:
    """`[N, H, W]` uint8 unchanged, or `[N, H, W, 3]` RGB -> grey with Pillow's `convert("L")` integer luma."""
    if images.ndim == 3:
        return images
    rgb = images.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _pack(bits: np.ndarray) -> np.ndarray:
    """`[N, B]` bool -> `[N, ceil(B/8)]` uint8 bytes, first bit most significant (imagehash's hex order)."""
    return np.packbits(bits.reshape(bits.shape[0], -1), axis=1)


def average_hash(images: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """aHash of `images: [N, H, W(, 3)]` uint8 -> `[N, hash_size**2 / 8]` uint8 (imagehash.average_hash)."""
    pixels = resize_lanczos(to_grey(images), hash_size, hash_size)
    return _pack(pixels > pixels.reshape(len(pixels), -1).mean(axis=1)[:, None, None])


def dhash(images: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """dHash (horizontal gradient) -> `[N, hash_size**2 / 8]` uint8 (imagehash.dhash)."""
    pixels = resize_lanczos(to_grey(images), hash_size, hash_size + 1)
    return _pack(pixels[:, :, 1:] > pixels[:, :, :-1])


def phash(images: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """pHash (low frequencies of a 2D DCT above their median) -> `[N, hash_size**2 / 8]` (imagehash.phash)."""
    from scipy.fftpack import dct

    size = hash_size * highfreq_factor
    pixels = resize_lanczos(to_grey(images), size, size).astype(np.float64)
    low = dct(dct(pixels, axis=1), axis=2)[:, :hash_size, :hash_size]
    med = np.median(low.reshape(len(low), -1), axis=1)
    return _pack(low > med[:, None, None])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between packed hashes `a: [N, B]` and `b: [N, B]` (or broadcastable) -> `[N]`."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)
