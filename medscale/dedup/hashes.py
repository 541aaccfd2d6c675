"""Batched perceptual hashes (aHash, dHash, pHash), bit-identical to the `imagehash` library on the same pixels.

imagehash resizes each image with Pillow's LANCZOS filter, whose 8-bit path uses fixed-point coefficients;
this module rebuilds those exact integer coefficients once per (input size, output size) and applies them to a
whole batch as two integer matrix products, so hashing a batch costs a few numpy calls instead of N Pillow calls.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.fftpack import dct

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
def _pass_operands(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(exact float64 `[in, out]`, float32 `[in, out]` scaled by 2**-22, float32 error bound in output units)."""
    matrix = resample_matrix(in_size, out_size)
    exact = np.ascontiguousarray(matrix.T, dtype=np.float64)
    scaled = (exact / (1 << _PRECISION_BITS)).astype(np.float32)  # exact: coefficients are integers < 2**23
    # bound of a float32 dot product of n nonzero terms (zeros add exactly): n * 2**-24 * sum|x * c|, plus the + 0.5
    taps = int((matrix != 0).sum(axis=1).max())
    worst = 255 * np.abs(matrix).sum(axis=1).max() / (1 << _PRECISION_BITS)
    return exact, scaled, (taps + 2) * 2.0 ** -24 * worst + 2.0 ** -14


def _resample_rows(rows: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """`rows: [R, in_size]` uint8 -> `[R, out_size]` uint8, exactly as one of Pillow's LANCZOS passes rounds.

    A float32 product first; the outputs that lie within its worst-case error of a rounding boundary are
    recomputed in float64, which is exact here (every partial sum is an integer below 2**39).
    """
    exact, scaled, tolerance = _pass_operands(in_size, out_size)
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


def resize_lanczos(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """`images: [N, H, W]` uint8 -> `[N, height, width]` uint8, equal to Pillow's `resize(..., LANCZOS)` per image."""
    n, h, w = images.shape
    chunk = max(1, _CHUNK_PIXELS // (h * w))
    parts = []
    for start in range(0, n, chunk):  # Pillow: horizontal pass first, then vertical, each rounded to 8 bits
        x = images[start:start + chunk]
        if width != w:
            x = _resample_rows(x.reshape(-1, w), w, width).reshape(len(x), h, width)
        if height != h:  # the vertical pass as a row pass over the transposed chunk
            cols = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(-1, h)
            x = _resample_rows(cols, h, height).reshape(len(x), width, height).transpose(0, 2, 1)
        parts.append(np.ascontiguousarray(x, dtype=np.uint8))
    return np.concatenate(parts) if parts else np.zeros((0, height, width), np.uint8)


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


@lru_cache(maxsize=16)
def _dct_rows(size: int, keep: int) -> np.ndarray:
    """The first `keep` rows of scipy's unnormalised DCT-II of length `size` as a `[keep, size]` float64 matrix."""
    n = np.arange(size)
    return 2.0 * np.cos(np.pi * np.arange(keep)[:, None] * (2 * n[None, :] + 1) / (2 * size))


def _low_frequencies(pixels: np.ndarray, keep: int) -> np.ndarray:
    """`pixels: [N, S, S]` float64 -> the `[N, keep, keep]` corner of the 2D DCT, as two matrix products."""
    d = _dct_rows(pixels.shape[1], keep)
    n, size = pixels.shape[0], pixels.shape[1]
    cols = (pixels.reshape(n * size, size) @ d.T).reshape(n, size, keep)  # DCT along axis 2
    return np.einsum("ks,nsj->nkj", d, cols)  # then along axis 1


def phash(images: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """pHash (low frequencies of a 2D DCT above their median) -> `[N, hash_size**2 / 8]` (imagehash.phash).

    The DCT corner is two matrix products; an image whose coefficients lie within rounding distance of their
    median (where the products and scipy's FFT-based DCT could disagree on a bit) is redone with scipy.
    """
    size = hash_size * highfreq_factor
    pixels = resize_lanczos(to_grey(images), size, size).astype(np.float64)
    low = _low_frequencies(pixels, hash_size).reshape(len(pixels), -1)
    med = np.median(low, axis=1)
    scale = np.abs(low).max(axis=1) + 1.0
    # both DCTs are within ~1e-12 * scale of the exact one, so a bit can differ only this close to the median
    unsure = np.flatnonzero((np.abs(low - med[:, None]) < 1e-9 * scale[:, None]).any(axis=1))
    bits = low > med[:, None]
    if len(unsure):
        exact = dct(dct(pixels[unsure], axis=1), axis=2)[:, :hash_size, :hash_size].reshape(len(unsure), -1)
        bits[unsure] = exact > np.median(exact, axis=1)[:, None]
    return _pack(bits)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between packed hashes `a: [N, B]` and `b: [N, B]` (or broadcastable) -> `[N]`."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


HASHES = {"ahash": average_hash, "dhash": dhash, "phash": phash}


def to_uint64(packed: np.ndarray) -> np.ndarray:
    """64-bit packed hashes `[N, 8]` uint8 -> `[N]` uint64 whose hex equals imagehash's string."""
    if packed.ndim != 2 or packed.shape[1] != 8:
        raise ValueError(f"expected [N, 8] packed 64-bit hashes, got shape {packed.shape}")
    return np.ascontiguousarray(packed).view(">u8").reshape(-1).astype(np.uint64)


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """One stored slice `[H, W]` or `[H, W, 3]`, 8- or 16-bit -> uint8 (16-bit keeps its top 8 bits)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    raise ValueError(f"hashes need uint8 or uint16 pixels, got {pixels.dtype}")


def hash_images(images: list, names: tuple = ("ahash", "dhash", "phash")) -> dict:
    """64-bit hashes of a list of slices of any shapes -> `{name: uint64[N]}` (batched per shape)."""
    out = {name: np.zeros(len(images), np.uint64) for name in names}
    by_shape: dict = {}
    for i, img in enumerate(images):
        img = to_grey(to_8bit(img)[None])[0]
        by_shape.setdefault(img.shape, []).append((i, img))
    for group in by_shape.values():
        idx = np.array([i for i, _ in group])
        batch = np.stack([img for _, img in group])
        for name in names:
            out[name][idx] = to_uint64(HASHES[name](batch))
    return out


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 -> uint8 array of the same shape."""
    return np.bitwise_count(x)
