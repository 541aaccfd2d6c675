"""MedMNIST-style npz arrays ({split}_images, {split}_labels), read a row range at a time."""

from __future__ import annotations

import zipfile
from typing import IO, Dict, List, Optional, Tuple

import numpy as np
from numpy.lib import format as npy_format

from medscale.core.errors import InputError


def _open_member(zf: zipfile.ZipFile, key: str):
    fh = zf.open(key + ".npy")
    version = npy_format.read_magic(fh)
    reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = reader(fh)
    if fortran:
        raise InputError(f"array {key} is Fortran-ordered; re-save it C-ordered (np.ascontiguousarray)")
    return fh, shape, dtype


def npz_splits(fh: IO[bytes], path: str) -> Dict[str, Tuple[int, Tuple[int, ...], Optional[Tuple[int, ...]]]]:
    """{split: (rows, image shape, label shape or None)} for every `*images` array of an npz file."""
    try:
        zf = zipfile.ZipFile(fh)
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if not names:
            raise InputError(f"{path}: a zip file without .npy arrays, not an npz")
        splits = {}
        for name in names:
            if not name.endswith("images"):
                continue
            split = name[: -len("images")].rstrip("_")
            member, shape, _ = _open_member(zf, name)
            member.close()
            label_shape = None
            label_key = f"{split}_labels" if split else "labels"
            if label_key in names:
                lm, label_shape, _ = _open_member(zf, label_key)
                lm.close()
            splits[split] = (shape[0], tuple(shape[1:]), label_shape)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: unreadable npz ({type(exc).__name__}: {exc})") from exc
    if not splits:
        raise InputError(f"{path}: npz without an '*images' array (keys: {sorted(names)}); "
                         "expected MedMNIST keys such as train_images/train_labels")
    return splits


def _read_rows(zf: zipfile.ZipFile, key: str, start: int, stop: int) -> np.ndarray:
    member, shape, dtype = _open_member(zf, key)
    with member:
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        member.seek(member.tell() + start * row_bytes)  # streams through compressed members; memory stays bounded
        count = stop - start
        data = member.read(count * row_bytes)
    if len(data) != count * row_bytes:
        raise InputError(f"array {key} is truncated: expected rows {start}..{stop}")
    return np.frombuffer(data, dtype=dtype).reshape((count,) + tuple(shape[1:]))


def read_npz_rows(fh: IO[bytes], path: str, split: str, start: int, stop: int) -> Tuple[np.ndarray, Optional[List]]:
    """(images `[n, H, W(, C)]`, labels: one int per row, a list per multi-label row, or None) for rows
    [start, stop)."""
    try:
        zf = zipfile.ZipFile(fh)
        prefix = f"{split}_" if split else ""
        images = _read_rows(zf, f"{prefix}images", start, stop)
        labels = None
        if f"{prefix}labels.npy" in zf.namelist():
            raw = _read_rows(zf, f"{prefix}labels", start, stop)
            raw = raw.reshape(raw.shape[0], -1)
            labels = [int(r[0]) if r.shape[0] == 1 else [int(v) for v in r] for r in raw]
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise InputError(f"{path}: unreadable npz rows {split}[{start}:{stop}] ({type(exc).__name__}: {exc})") from exc
    return images, labels
