"""Batched perceptual hashes (aHash, dHash, pHash), bit-identical to the `imagehash` library on the same pixels.

imagehash resizes each image with Pillow's LANCZOS filter, whose 8-bit path uses fixed-point coefficients;
`medscale.hashing.resample` rebuilds those exact coefficients and applies them to a whole batch as exact matrix
products, so hashing a batch costs a few BLAS calls instead of N Pillow calls.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from medscale.hashing.native import phash_low_native
from medscale.hashing.resample import CHUNK_PIXELS, resize_lanczos, resize_many


def as_pixels(images) -> np.ndarray:
    """A batch as numpy `[N, H, W]` grey or `[N, H, W, 3]` RGB uint8. numpy arrays pass as they are; torch tensors
    (any device) may also be channels-first, `[N, 1, H, W]` or `[N, 3, H, W]`, as torch pipelines hold them."""
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # a torch tensor (torch is not imported for numpy input)
        array = images.detach().cpu().numpy()
        if array.ndim == 4 and array.shape[1] in (1, 3):
            array = array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)
    else:
        array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"hashes need uint8 pixels (imagehash hashes 8-bit images), got {array.dtype}: scale to "
                         "0..255 and convert first, e.g. (x * 255).round().to(torch.uint8) or np.uint8")
    if not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)):
        raise ValueError(f"expected a batch [N, H, W] or [N, H, W, 3] (torch also [N, 1|3, H, W]), got {array.shape}")
    return array


def to_grey(images) -> np.ndarray:
    """`[N, H, W]` uint8 unchanged, or `[N, H, W, 3]` RGB -> grey with Pillow's `convert("L")` integer luma (numpy
    or torch input, see `as_pixels`)."""
    images = as_pixels(images)
    if images.ndim == 3:
        return images
    rgb = images.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _pack(bits: np.ndarray) -> np.ndarray:
    """`[N, B]` bool -> `[N, ceil(B/8)]` uint8 bytes, first bit most significant (imagehash's hex order)."""
    return np.packbits(bits.reshape(bits.shape[0], -1), axis=1)


def _ahash_bits(pixels: np.ndarray) -> np.ndarray:
    return pixels > pixels.reshape(len(pixels), -1).mean(axis=1)[:, None, None]


def _dhash_bits(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, :, 1:] > pixels[:, :, :-1]


def average_hash(images: np.ndarray, hash_size: int = 8, backend: str = "auto") -> np.ndarray:
    """aHash of `images: [N, H, W(, 3)]` uint8 (numpy, or torch also channels-first) -> `[N, hash_size**2 / 8]`
    uint8 (imagehash.average_hash). `backend`: the resampling backend (`resample.BACKENDS`)."""
    return _pack(_ahash_bits(resize_lanczos(to_grey(images), hash_size, hash_size, backend)))


def dhash(images: np.ndarray, hash_size: int = 8, backend: str = "auto") -> np.ndarray:
    """dHash (horizontal gradient) -> `[N, hash_size**2 / 8]` uint8 (imagehash.dhash)."""
    return _pack(_dhash_bits(resize_lanczos(to_grey(images), hash_size, hash_size + 1, backend)))


@lru_cache(maxsize=16)
def _dct_rows(size: int, keep: int) -> np.ndarray:
    """The first `keep` rows of scipy's unnormalised DCT-II of length `size` as a `[keep, size]` float64 matrix."""
    n = np.arange(size)
    return 2.0 * np.cos(np.pi * np.arange(keep)[:, None] * (2 * n[None, :] + 1) / (2 * size))


def _low_frequencies(pixels: np.ndarray, keep: int) -> np.ndarray:
    """`pixels: [N, S, S]` float64 -> the `[N, keep, keep]` corner of the 2D DCT, as two matrix products."""
    d = _dct_rows(pixels.shape[1], keep)
    n, size = pixels.shape[0], pixels.shape[1]
    cols = (pixels.reshape(n * size, size) @ d.T).reshape(n, size, keep)  # DCT along axis 2: [N, S, keep]
    by_row = np.ascontiguousarray(cols.transpose(1, 0, 2)).reshape(size, n * keep)
    return (d @ by_row).reshape(keep, n, keep).transpose(1, 0, 2)  # then along axis 1


def phash(images: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4, backend: str = "auto") -> np.ndarray:
    """pHash (low frequencies of a 2D DCT above their median) -> `[N, hash_size**2 / 8]` (imagehash.phash).

    The DCT corner is two matrix products; an image whose coefficients lie within rounding distance of their
    median (where the products and scipy's FFT-based DCT could disagree on a bit) is redone with scipy.
    """
    size = hash_size * highfreq_factor
    return _pack(_phash_bits(resize_lanczos(to_grey(images), size, size, backend), hash_size, backend))


def _phash_bits(resized: np.ndarray, hash_size: int, backend: str) -> np.ndarray:
    """`resized: [N, S, S]` uint8 -> `[N, hash_size**2]` bits: DCT corner above its median. The compiled DCT
    corner is used unless `backend` is "numpy"."""
    use_native = hash_size == 8 and backend != "numpy"
    native = phash_low_native(resized, _dct_rows(resized.shape[1], 8)) if use_native else None
    if native is not None:
        low, med = native
    else:
        low = _low_frequencies(resized.astype(np.float64), hash_size).reshape(len(resized), -1)
        med = np.median(low, axis=1)
    scale = np.abs(low).max(axis=1) + 1.0
    # both DCTs are within ~1e-12 * scale of the exact one, so a bit can differ only this close to the median
    unsure = np.flatnonzero((np.abs(low - med[:, None]) < 1e-9 * scale[:, None]).any(axis=1))
    bits = low > med[:, None]
    if len(unsure):
        from scipy.fftpack import dct  # imagehash's DCT, for the rare images where the bits could differ

        pixels = resized[unsure].astype(np.float64)
        exact = dct(dct(pixels, axis=1), axis=2)[:, :hash_size, :hash_size].reshape(len(unsure), -1)
        bits[unsure] = exact > np.median(exact, axis=1)[:, None]
    return bits


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between packed hashes `a: [N, B]` and `b: [N, B]` (or broadcastable) -> `[N]`."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


HASHES = {"ahash": average_hash, "dhash": dhash, "phash": phash}  # the registry: one function per hash name
HASH_NAMES = tuple(HASHES)
_SIZES = {"ahash": (8, 8), "dhash": (8, 9), "phash": (32, 32)}  # what each 64-bit hash resizes to
_BITS = {"ahash": _ahash_bits, "dhash": _dhash_bits}


def to_uint64(packed: np.ndarray) -> np.ndarray:
    """64-bit packed hashes `[N, 8]` uint8 -> `[N]` uint64 whose hex equals imagehash's string."""
    if packed.ndim != 2 or packed.shape[1] != 8:
        raise ValueError(f"expected [N, 8] packed 64-bit hashes, got shape {packed.shape}")
    return np.ascontiguousarray(packed).view(">u8").reshape(-1).astype(np.uint64)


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """Stored slices (any shape), 8- or 16-bit -> uint8 (16-bit keeps its top 8 bits)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    raise ValueError(f"hashes need uint8 or uint16 pixels, got {pixels.dtype}")


def hash_images(images: list, names: Sequence[str] = HASH_NAMES, backend: str = "auto") -> dict:
    """64-bit hashes of a list of slices of any shapes -> `{name: uint64[N]}` (batched per shape)."""
    unknown = [name for name in names if name not in HASHES]
    if unknown:
        raise ValueError(f"unknown hash {unknown[0]!r}; choose among {', '.join(HASH_NAMES)}")
    out = {name: np.zeros(len(images), np.uint64) for name in names}
    by_shape: dict = {}
    for i, img in enumerate(images):  # group first, convert whole groups (no per-image numpy calls)
        by_shape.setdefault((img.shape, img.dtype.str), []).append(i)
    for (shape, _), idx in by_shape.items():
        step = max(1, CHUNK_PIXELS // max(1, int(np.prod(shape[:2]))))
        for first in range(0, len(idx), step):  # stacked a chunk at a time, so the copy stays in cache
            chunk = np.array(idx[first:first + step])
            batch = to_grey(to_8bit(np.stack([images[i] for i in chunk])))
            resized = resize_many(batch, [_SIZES[name] for name in names], backend)
            for name in names:
                pixels = resized[_SIZES[name]]
                bits = _phash_bits(pixels, 8, backend) if name == "phash" else _BITS[name](pixels)
                out[name][chunk] = to_uint64(_pack(bits))
    return out
