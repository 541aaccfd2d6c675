"""DICOM on real files: series grouping, geometric order (never by file name), HU, MONOCHROME1, multi-frame, JPEG."""

import shutil

import numpy as np
import pydicom
import pytest

from medscale.data.dicom import order_series, read_frames, read_header
from tests.conftest import PYDICOM_DATA, PYDICOM_FILES

CT5N = PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N"


def _headers(paths):
    out = []
    for p in paths:
        with open(p, "rb") as fh:
            out.append(read_header(fh, str(p)))
    return out


def test_series_ordered_by_position_along_normal_not_by_name(tmp_path):
    # copy the real 5-slice CT series under names whose sort order disagrees with anatomy
    originals = sorted(CT5N.iterdir())
    names = ["z", "a", "m", "b", "y"]
    for name, src in zip(names, originals):
        shutil.copy(src, tmp_path / name)
    headers = _headers(sorted(tmp_path.iterdir()))
    ordered, positions, method = order_series(headers)
    assert method == "position"
    assert positions == sorted(positions) and len(set(positions)) == 5
    z = [h.position[2] for h in ordered]
    normal_sign = np.sign(np.cross(ordered[0].orientation[:3], ordered[0].orientation[3:])[2])
    assert z == sorted(z, reverse=bool(normal_sign < 0))
    assert {h.series_uid for h in ordered} == {headers[0].series_uid}


def test_order_falls_back_to_instance_number(tmp_path):
    for i, src in enumerate(sorted(CT5N.iterdir())):
        ds = pydicom.dcmread(src)
        del ds.ImagePositionPatient
        ds.InstanceNumber = 5 - i
        ds.save_as(tmp_path / f"f{i}.dcm")
    ordered, positions, method = order_series(_headers(sorted(tmp_path.iterdir())))
    assert method == "instance_number"
    assert [h.instance_number for h in ordered] == [1, 2, 3, 4, 5]
    assert positions == [None] * 5


def test_ct_rescale_to_hounsfield_units():
    path = PYDICOM_FILES / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    with open(path, "rb") as fh:
        frames, colour = read_frames(fh, str(path))
    assert not colour and frames.shape == (1, ds.Rows, ds.Columns)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(frames[0], expected)


def test_monochrome1_is_inverted():
    path = PYDICOM_DATA / "RG1_UNCR.dcm"  # a real CR stored as MONOCHROME1
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    with open(path, "rb") as fh:
        frames, _ = read_frames(fh, str(path))
    raw = ds.pixel_array.astype(np.float32)
    np.testing.assert_allclose(frames[0], raw.max() + raw.min() - raw)


def test_multiframe_and_jpeg_baseline_colour():
    with open(PYDICOM_DATA / "emri_small.dcm", "rb") as fh:
        frames, colour = read_frames(fh, "emri_small.dcm")
    assert frames.shape == (10, 64, 64) and not colour
    path = PYDICOM_DATA / "color3d_jpeg_baseline.dcm"
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    with open(path, "rb") as fh:
        frames, colour = read_frames(fh, str(path))
    assert colour and frames.shape == (120, 480, 640, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # decoded image content, not a blank


def test_header_keeps_metadata_that_matters():
    with open(PYDICOM_FILES / "CT_small.dcm", "rb") as fh:
        h = read_header(fh, "CT_small.dcm")
    assert h.modality == "CT" and h.series_uid and h.study_uid
    assert len(h.spacing) == 3 and h.rows == 128 and h.frames == 1


def test_dicomdir_is_rejected_with_reason():
    from medscale.core.errors import InputError

    with open(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", "rb") as fh, pytest.raises(InputError, match="DICOMDIR"):
        read_header(fh, "DICOMDIR")
