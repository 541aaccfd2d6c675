"""A vectorised PNG encoder: one "Up" filter for the whole image (numpy) + zlib, ~2x faster than PIL's per-row
adaptive filtering at compress level 1, with smaller files on medical images; and the matching decoder (zlib-ng's
inflate where installed, ~2x zlib's; the bytes are the same)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

try:
    from zlib_ng.zlib_ng import decompress as _inflate
    from zlib_ng.zlib_ng import error as _InflateError
except ImportError:  # a platform without its wheel: the standard zlib, same output
    from zlib import decompress as _inflate
    from zlib import error as _InflateError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """`pixels: [H, W]` uint8/uint16 (grey) or `[H, W, 3]` uint8 (RGB) -> PNG bytes (8- or 16-bit, lossless)."""
    if pixels.ndim == 2 and pixels.dtype in (np.uint8, np.uint16):
        colour_type = 0
    elif pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
        colour_type = 2
    else:
        raise ValueError(f"cannot encode pixels of shape {pixels.shape} and dtype {pixels.dtype} as PNG; "
                         "expected [H, W] uint8/uint16 or [H, W, 3] uint8")
    height, width = pixels.shape[:2]
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(pixels, dtype=">u2" if bit_depth == 16 else np.uint8).view(np.uint8)
    rows = rows.reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the byte above (modulo 256)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)),
                     _IEND))


def _decode_up_filtered(data: bytes) -> np.ndarray | None:
    """Fast path for PNGs as `encode_png` writes them (IHDR, one IDAT, IEND; every row filtered Up): zlib plus one
    cumulative sum down the rows. None for any other PNG (other chunks, filters, interlacing, palettes)."""
    if len(data) < 57 or data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    (idat_len,) = struct.unpack(">I", data[33:37])
    if data[37:41] != b"IDAT" or 45 + idat_len + 12 != len(data) or interlace or depth not in (8, 16) or \
            colour not in (0, 2) or (colour == 2 and depth != 8):
        return None
    row = width * (3 if colour == 2 else 1) * depth // 8
    try:
        raw = np.frombuffer(_inflate(data[41:41 + idat_len]), np.uint8)
    except _InflateError:
        return None
    if raw.size != height * (row + 1):
        return None
    raw = raw.reshape(height, row + 1)
    if not (raw[:, 0] == 2).all():
        return None
    rows = _running_sum(raw[:, 1:])  # undo Up: running sum modulo 256 down each byte column
    if depth == 16:
        return rows.view(">u2").astype(np.uint16).reshape(height, width)
    return rows.reshape(height, width, 3) if colour == 2 else rows


def _running_sum(rows: np.ndarray) -> np.ndarray:
    """`rows: [H, B]` uint8 -> their cumulative sum down axis 0, modulo 256, in log2(H) whole-array adds (a
    Hillis-Steele scan: ~4x faster than `np.cumsum(axis=0)`, which walks the rows one by one)."""
    out, shifted = rows.copy(), np.empty_like(rows)
    step = 1
    while step < len(out):
        np.add(out[step:], out[:-step], out=shifted[step:])
        out[step:] = shifted[step:]
        step *= 2
    return out


def decode_png(data: bytes) -> np.ndarray:
    """A stored PNG -> `[H, W]` uint8/uint16 or `[H, W, 3]` uint8 (our own PNGs fast, any other through PIL)."""
    fast = _decode_up_filtered(data)
    if fast is not None:
        return fast
    img = Image.open(io.BytesIO(data))
    arr = np.asarray(img)
    return arr.astype(np.uint16) if arr.dtype.kind in "iu" and arr.dtype.itemsize > 1 else arr
