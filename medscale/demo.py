"""The embedded demo: a small real multi-source corpus (MedMNIST npz + DICOM + NIfTI shipped by installed packages)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import List

DEMO_DATA = Path(__file__).parent / "demo_data"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def demo_inputs() -> List[str]:
    """Input specs (`name=path`) of the demo corpus; only files that installed packages or this repo ship."""
    inputs = [f"{p.stem.split('_')[0]}={p}" for p in sorted((DEMO_DATA / "medmnist").glob("*.npz"))]
    pydicom_dir = _package_dir("pydicom")
    if pydicom_dir:
        inputs.append(f"dicomdir={pydicom_dir / 'data' / 'test_files' / 'dicomdirtests'}")
    store = _package_dir("data_store")  # the pydicom-data package
    if store and (store / "data").is_dir():
        for name in ("emri_small.dcm", "US1_UNCR.dcm", "RG1_UNCR.dcm", "MR2_UNCR.dcm", "color3d_jpeg_baseline.dcm"):
            if (store / "data" / name).exists():
                inputs.append(f"pydicom-data={store / 'data' / name}")
    nib_dir = _package_dir("nibabel")
    if nib_dir:
        for name in ("example4d.nii.gz", "anatomical.nii"):
            path = nib_dir / "tests" / "data" / name
            if path.exists():
                inputs.append(f"nibabel={path}")
    return inputs


DEMO_MODALITIES = {"breastmnist": "US", "pneumoniamnist": "CR"}  # MedMNIST npz carry no DICOM tags


def default_output() -> str:
    """Where the demo writes: $MEDSCALE_DEMO_OUTPUT or ./outputs/demo."""
    return os.environ.get("MEDSCALE_DEMO_OUTPUT", os.path.join("outputs", "demo"))
