"""Real volumes and planted re-exports of them in a second source: another window, every second slice, reversed
slice order, a resampled slice thickness (NIfTI files written so that medscale reads back the same slices)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from medscale.core.executor import executor_for
from medscale.data.config import ShardConfig
from medscale.data.sources import plan_reading, read_unit
from tests.conftest import NIBABEL_DATA, PYDICOM_DATA, PYDICOM_FILES

REAL = {  # name -> a real volume of the installed packages' test data
    "anatomical": NIBABEL_DATA / "anatomical.nii",
    "example4d": NIBABEL_DATA / "example4d.nii.gz",
    "nifti2": NIBABEL_DATA / "example_nifti2.nii.gz",
    "emri": PYDICOM_DATA / "emri_small.dcm",
    "cine": PYDICOM_DATA / "color3d_jpeg_baseline.dcm",
    "ct5n": PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N",
}


def stack(path: Path) -> np.ndarray:
    """The volume's slices `[S, H, W]` (float, grey) as medscale reads them (frames over 128 px
    reduced by block means: a re-export at another resolution)."""
    executor = executor_for("local", 0.0)
    try:
        units = plan_reading([str(path)], {}, executor)
    finally:
        executor.close()
    slices = [(fields.get("slice") if fields.get("slice") is not None else fields.get("frame") or 0, pixels)
              for unit in units for _, fields, pixels in read_unit(unit, ShardConfig(progress=False))]
    slices.sort(key=lambda s: s[0])
    images = np.stack([p.mean(axis=2) if p.ndim == 3 else p for _, p in slices]).astype(np.float32)
    f = max(1, max(images.shape[1:]) // 128)  # large frames (the 480x640 cine loop) re-exported 4x smaller
    h, w = images.shape[1] // f * f, images.shape[2] // f * f
    return images[:, :h, :w].reshape(len(images), h // f, f, w // f, f).mean(axis=(2, 4))


def windowed(s: np.ndarray) -> np.ndarray:
    """Another display window: the 5th-95th percentile range of the volume stretched to the full range."""
    lo, hi = np.percentile(s, [5, 95])
    return np.clip((s - lo) / max(hi - lo, 1e-6), 0, 1) * 255


def resampled(s: np.ndarray, factor: float = 1.5) -> np.ndarray:
    """Slices `factor` times as thick (linear interpolation between the originals)."""
    positions = np.arange(0, len(s) - 1 + 1e-6, factor)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, len(s) - 1)
    w = (positions - low)[:, None, None]
    return s[low] * (1 - w) + s[high] * w


REEXPORTS = {"window": windowed, "every2": lambda s: s[::2], "reversed": lambda s: s[::-1], "thick": resampled}


def write_nifti(s: np.ndarray, path: Path) -> None:
    """`[S, H, W]` as a NIfTI volume that medscale slices back into the same `[H, W]` images."""
    import nibabel as nib

    voxels = np.stack([np.rot90(img, k=-1) for img in s], axis=2)  # the reader rotates each slice by 90 degrees
    nib.save(nib.Nifti1Image(np.clip(np.rint(voxels), 0, 255).astype(np.uint8), np.eye(4)), str(path))


def plant(folder: Path, names=tuple(REAL)) -> Tuple[List[str], Dict[str, Tuple[str, str]]]:
    """(shard inputs: `orig=REAL` and `mirror=FOLDER`, {re-export file stem: (volume name, transform)})."""
    folder.mkdir(parents=True, exist_ok=True)
    planted = {}
    for name in names:
        s = stack(REAL[name])
        for kind, transform in REEXPORTS.items():
            write_nifti(transform(s), folder / f"{name}-{kind}.nii")
            planted[f"{name}-{kind}"] = (name, kind)
    return [f"orig={REAL[n]}" for n in names] + [f"mirror={folder}"], planted
