"""DICOM: header scan, series grouping, geometric slice order, and pixels in physical units."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from medscale.core.errors import InputError

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class DicomHeader:
    """What series grouping and ordering need from one file, read without its pixels."""

    path: str
    series_uid: str
    study_uid: str
    modality: str
    body_part: str
    instance_number: Optional[int]
    position: Optional[Tuple[float, float, float]]  # ImagePositionPatient
    orientation: Optional[Tuple[float, ...]]  # ImageOrientationPatient (6 values)
    frames: int
    rows: int
    columns: int
    spacing: List[float] = field(default_factory=list)  # [row, col] mm, + slice thickness when known
    colour: bool = False


def _floats(value, n: int) -> Optional[Tuple[float, ...]]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def read_header(fh: IO[bytes], path: str) -> DicomHeader:
    """Parse the header of one DICOM file (no pixels); InputError when it is not an image DICOM."""
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    sop = str(getattr(ds, "SOPClassUID", "") or ds.get("MediaStorageSOPClassUID", "") or
              getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise InputError(f"{path}: a DICOMDIR index file, no pixel data")
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"{path}: DICOM without pixel data (no Rows/Columns; SOP class {sop or 'unknown'})")
    spacing = list(_floats(ds.get("PixelSpacing", None) or (), 2) or ())
    thickness = ds.get("SliceThickness", None)
    if spacing and thickness not in (None, ""):
        spacing.append(float(thickness))
    number = ds.get("InstanceNumber", None)
    return DicomHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        modality=str(ds.get("Modality", "") or "OT"),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        instance_number=int(number) if number not in (None, "") else None,
        position=_floats(ds.get("ImagePositionPatient", None), 3),
        orientation=_floats(ds.get("ImageOrientationPatient", None), 6),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        spacing=spacing,
        colour=int(ds.get("SamplesPerPixel", 1) or 1) == 3,
    )


def order_series(headers: Sequence[DicomHeader]) -> Tuple[List[DicomHeader], List[Optional[float]], str]:
    """Slices of one series in anatomical order: by ImagePositionPatient along the slice normal,
    else by InstanceNumber, else by path (named in the returned method so that a person can check).

    Returns (ordered headers, position along the normal or None, method).
    """
    headers = list(headers)
    orient = headers[0].orientation if headers else None
    if orient and all(h.position is not None and h.orientation == orient for h in headers):
        row, col = np.asarray(orient[:3]), np.asarray(orient[3:])
        normal = np.cross(row, col)
        positions = [float(np.dot(normal, h.position)) for h in headers]
        if len(set(positions)) == len(positions):
            order = sorted(range(len(headers)), key=lambda i: positions[i])
            return [headers[i] for i in order], [positions[i] for i in order], "position"
    if all(h.instance_number is not None for h in headers):
        ordered = sorted(headers, key=lambda h: (h.instance_number, h.path))
        return ordered, [None] * len(ordered), "instance_number"
    return sorted(headers, key=lambda h: h.path), [None] * len(headers), "path"


def read_frames(fh: IO[bytes], path: str) -> Tuple[np.ndarray, bool]:
    """Pixels of every frame in physical units (RescaleSlope/Intercept applied; MONOCHROME1 inverted).

    Returns (frames, colour): grey `[F, H, W]` float32, or colour `[F, H, W, 3]` uint8/uint16.
    """
    try:
        ds = pydicom.dcmread(fh, force=True)
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise InputError(f"{path}: DICOM without pixel data")
        arr = ds.pixel_array
    except InputError:
        raise
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?") if "ds" in locals() else "?"
        raise InputError(f"{path}: cannot decode DICOM pixels (transfer syntax {syntax}; "
                         f"{type(exc).__name__}: {exc})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = int(ds.get("SamplesPerPixel", 1) or 1) == 3
    if colour:
        return (arr if frames > 1 else arr[None]), True
    values = apply_modality_lut(arr, ds).astype(np.float32, copy=False)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = values.max() + values.min() - values  # invert so that higher = brighter, range kept
    if frames == 1:
        values = values[None]
    return values, False

