"""Detect an input file's kind from its bytes (magic numbers), never from its name alone."""

from __future__ import annotations

import struct
import zlib
from typing import Optional

DICOM, NIFTI, IMAGE, NPZ = "dicom", "nifti", "image", "npz"
HEAD_BYTES = 352  # enough for the DICOM preamble+magic and a NIfTI-1 header


def _nifti_header(head: bytes) -> bool:
    if len(head) < 348:
        return False
    for order in ("<", ">"):
        (size,) = struct.unpack(order + "i", head[:4])
        if size == 348 and head[344:347] in (b"n+1", b"ni1"):
            return True
        if size == 540 and head[4:7] in (b"n+2", b"ni2"):
            return True
    return False


def gunzip_head(head: bytes) -> bytes:
    """The first `HEAD_BYTES` of a gzip stream's content from its first bytes (b"" when not gzip)."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, HEAD_BYTES)
    except zlib.error:
        return b""


def detect_kind(head: bytes, name: str = "") -> Optional[str]:
    """The kind of a file from its first bytes (read `HEAD_BYTES`; more for .gz): dicom, nifti, image, npz or None.

    `name` only breaks one tie: DICOM files written without the 128-byte preamble have no magic number,
    so a `.dcm` name lets the reader try them (and quarantine them if they do not parse).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff":
        return IMAGE
    if head[:4] == b"PK\x03\x04":
        return NPZ  # a zip; the npz reader checks it holds .npy arrays
    if head[:2] == b"\x1f\x8b":
        return NIFTI if _nifti_header(gunzip_head(head)) else None
    if _nifti_header(head):
        return NIFTI
    if name.lower().endswith((".dcm", ".dicom")) and len(head) >= 8:
        # preamble-less DICOM starts with a group 0x0002 or 0x0008 tag, little endian
        if head[:2] in (b"\x02\x00", b"\x08\x00"):
            return DICOM
    return None


def read_head(fh, name: str = "") -> bytes:
    """The bytes `detect_kind` needs from an open binary file; for gzip, enough compressed bytes to inflate a header."""
    head = fh.read(HEAD_BYTES)
    if head[:2] == b"\x1f\x8b":
        head += fh.read(64 * 1024)
    return head


__all__ = ["DICOM", "NIFTI", "IMAGE", "NPZ", "detect_kind", "read_head"]
