"""NIfTI (.nii, .nii.gz): canonical (RAS) orientation, one volume of 4D, 2D slices along an axis."""

from __future__ import annotations

from typing import Iterator, List, Tuple

import nibabel as nib
import numpy as np

from medscale.core.errors import InputError


def load_volume(local_path: str, volume: int = 0) -> Tuple[np.ndarray, List[float]]:
    """(voxels `[X, Y, Z]` float32 in RAS+ orientation, voxel spacing in mm) of one NIfTI file."""
    try:
        img = nib.as_closest_canonical(nib.load(local_path))
        shape = img.shape
        if len(shape) < 3:
            raise InputError(f"{local_path}: NIfTI with {len(shape)} dimensions; expected a 3D or 4D volume")
        if len(shape) == 4:
            if volume >= shape[3]:
                raise InputError(f"{local_path}: asked for volume {volume} of a 4D NIfTI with {shape[3]}; "
                                 "set shard.sources.NAME.nifti_volume below that")
            data = np.asarray(img.dataobj[..., volume], dtype=np.float32)
        elif len(shape) == 3:
            data = np.asarray(img.dataobj, dtype=np.float32)
        else:
            raise InputError(f"{local_path}: NIfTI with {len(shape)} dimensions; expected 3D or 4D")
        spacing = [float(z) for z in img.header.get_zooms()[:3]]
    except InputError:
        raise
    except Exception as exc:  # truncated gzip, bad header, short data: nibabel raises many types
        raise InputError(f"{local_path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from exc
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data, spacing


def volume_to_slices(voxels: np.ndarray, axis: int = 2, stride: int = 1) -> Iterator[Tuple[int, np.ndarray]]:
    """(slice index, `[H, W]` image) along `axis` of a RAS volume, rotated so that anterior/superior is up."""
    for index in range(0, voxels.shape[axis], stride):
        yield index, np.rot90(np.take(voxels, index, axis=axis))
