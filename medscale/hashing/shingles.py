"""Local codes of an image, for set similarity (MinHash): near-copies that global hashes miss share most of them.

An image is reduced to its working resolution (grey; block means by the smallest whole factor that brings its
longer side to `MAX_SIDE` (48) or under, so a 28-px MedMNIST image stays as it is; 64 px would leave bicubic
upscales so smooth that different ones share their codes), every 3x3 patch is binarised
against its own mean (9 bits), and each code is paired with the code 3 pixels to its right (18 bits): the set of
these pairs. A shift by whole pixels at the working resolution moves the pairs without changing them, so a
shifted copy keeps nearly all of them (all but those the new border cuts); pairing two patches makes a token far
rarer than one patch's code, which is what keeps alike images (chest X-rays) apart. Flat patches (every pixel
within one grey level of the mean) carry no code. A shift is caught when it is whole pixels at the working
resolution: any shift of an image up to 48 px, only multiples of 5 px of a 224-px one. Codes are not invariant to
rescaling, blur or noise: global hashes handle those.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAX_SIDE = 48
PATCH, GAP = 3, 3
CODES_VERSION = 1  # bump when the codes change: stored signatures of another version are recomputed


def working_image(pixels: np.ndarray) -> np.ndarray:
    """`[H, W]` or `[H, W, C]` (8 or 16 bits) -> grey float32 on a 0-255 scale at the working resolution."""
    x = pixels.astype(np.float32)
    if x.ndim == 3:
        x = x.mean(axis=2)
    if pixels.dtype == np.uint16:
        x = x / 257.0
    factor = -(-max(x.shape) // MAX_SIDE)  # ceil
    if factor > 1:
        h, w = x.shape[0] // factor * factor, x.shape[1] // factor * factor
        x = x[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    return x


def local_codes(pixels: np.ndarray) -> np.ndarray:
    """The sorted unique uint64 tokens of one image (see the module docstring); empty for images under 3 x 7."""
    x = working_image(pixels)
    if x.shape[0] < PATCH or x.shape[1] < PATCH + GAP:
        return np.zeros(0, np.uint64)
    patches = sliding_window_view(x, (PATCH, PATCH)).reshape(x.shape[0] - PATCH + 1, x.shape[1] - PATCH + 1, -1)
    mean = patches.mean(axis=-1, keepdims=True)
    bits = (patches > mean).astype(np.uint64)
    codes = (bits << np.arange(PATCH * PATCH, dtype=np.uint64)).sum(axis=-1)
    textured = np.abs(patches - mean).max(axis=-1) > 1.0
    left, right = codes[:, :-GAP], codes[:, GAP:]
    keep = textured[:, :-GAP] & textured[:, GAP:]
    return np.unique(((left << np.uint64(PATCH * PATCH)) | right)[keep])


def codes_of(images: Sequence[np.ndarray]) -> List[np.ndarray]:
    """`local_codes` of each image."""
    return [local_codes(image) for image in images]
