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

from typing import List, Sequence, Tuple

import numpy as np

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


def batch_codes(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Codes of a batch of same-sized working images `[N, H, W]` (float): (tokens `[N, M]` uint64, kept `[N, M]`
    bool), M = (H - 2) x (W - 5) pairs per image, repeats included (a set's MinHash does not count them)."""
    n, h, w = images.shape
    if h < PATCH or w < PATCH + GAP:
        return np.zeros((n, 0), np.uint64), np.zeros((n, 0), bool)
    x = np.asarray(images, np.float32)
    oh, ow = h - PATCH + 1, w - PATCH + 1
    shifted = [x[:, dy:dy + oh, dx:dx + ow] for dy in range(PATCH) for dx in range(PATCH)]  # the 9 pixels, as views
    mean = sum(shifted) / np.float32(PATCH * PATCH)
    codes = np.zeros((n, oh, ow), np.uint32)
    spread = np.zeros((n, oh, ow), np.float32)
    for bit, pixel in enumerate(shifted):  # one pass per pixel of the patch, over the whole batch
        codes |= (pixel > mean).astype(np.uint32) << np.uint32(bit)
        np.maximum(spread, np.abs(pixel - mean), out=spread)
    textured = spread > 1.0
    tokens = (codes[:, :, :-GAP].astype(np.uint64) << np.uint64(PATCH * PATCH)) | codes[:, :, GAP:]
    kept = textured[:, :, :-GAP] & textured[:, :, GAP:]
    return tokens.reshape(n, -1), kept.reshape(n, -1)


def local_codes(pixels: np.ndarray) -> np.ndarray:
    """The sorted unique uint64 tokens of one image (see the module docstring); empty for images under 3 x 6."""
    tokens, kept = batch_codes(working_image(pixels)[None])
    return np.unique(tokens[kept])


def codes_of(images: Sequence[np.ndarray]) -> List[np.ndarray]:
    """`local_codes` of each image (images of one size and type go through `batch_codes` together)."""
    out: List[np.ndarray] = [np.zeros(0, np.uint64)] * len(images)
    groups: dict = {}
    for i, image in enumerate(images):
        groups.setdefault((image.shape, image.dtype.str), []).append(i)
    for members in groups.values():
        work = np.stack([working_image(images[i]) for i in members])
        for start in range(0, len(members), 4096):
            tokens, kept = batch_codes(work[start:start + 4096])
            for i, t, k in zip(members[start:start + 4096], tokens, kept):
                out[i] = np.unique(t[k])
    return out
