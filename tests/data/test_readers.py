"""NIfTI, PNG/JPEG and npz readers, kind detection from bytes, and intensity mapping."""


import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medscale.data.detect import detect_kind, read_head
from medscale.data.images import read_image
from medscale.data.intensity import grey_to_output, scale_intensity
from medscale.data.nifti import load_volume, volume_to_slices
from medscale.data.npz import npz_splits, read_npz_rows
from tests.conftest import MEDMNIST, NIBABEL_DATA, PYDICOM_FILES


def _kind(path, name=None):
    with open(path, "rb") as fh:
        return detect_kind(read_head(fh), name or str(path))


def test_kind_comes_from_bytes_not_name(tmp_path):
    png = tmp_path / "scan.dcm"  # a PNG wearing a DICOM name
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png, format="PNG")
    assert _kind(png) == "image"
    assert _kind(PYDICOM_FILES / "CT_small.dcm") == "dicom"
    assert _kind(NIBABEL_DATA / "example4d.nii.gz") == "nifti"
    assert _kind(NIBABEL_DATA / "anatomical.nii") == "nifti"
    assert _kind(MEDMNIST / "breastmnist_28.npz") == "npz"
    txt = tmp_path / "notes.nii.gz"
    txt.write_text("not a volume")
    assert _kind(txt) is None


def test_nifti_canonical_orientation_gives_same_slices(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    ras = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    nib.save(ras, tmp_path / "ras.nii.gz")
    flipped = nib.Nifti1Image(data[::-1, :, ::-1].copy(), np.diag([-2.0, 2.0, -3.0, 1.0]) + np.array(
        [[0, 0, 0, 6.0], [0, 0, 0, 0], [0, 0, 0, 15.0], [0, 0, 0, 0]]))
    nib.save(flipped, tmp_path / "las.nii")
    a, spacing = load_volume(str(tmp_path / "ras.nii.gz"))
    b, _ = load_volume(str(tmp_path / "las.nii"))
    np.testing.assert_array_equal(a, b)
    assert spacing == [2.0, 2.0, 3.0]
    slices = list(volume_to_slices(a, axis=2, stride=2))
    assert [i for i, _ in slices] == [0, 2, 4]
    assert slices[0][1].shape == (5, 4)  # rows = anterior-posterior, columns = left-right


def test_nifti_4d_takes_the_requested_volume():
    img = nib.load(NIBABEL_DATA / "example4d.nii.gz")
    v1, _ = load_volume(str(NIBABEL_DATA / "example4d.nii.gz"), volume=1)
    expected = np.asarray(nib.as_closest_canonical(img).dataobj[..., 1], dtype=np.float32)
    np.testing.assert_array_equal(v1, expected)


def test_png_16bit_and_colour(tmp_path):
    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(grey16).save(tmp_path / "g.png")
    with open(tmp_path / "g.png", "rb") as fh:
        arr, colour, top = read_image(fh, "g.png")
    assert not colour and top == 65535 and arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, grey16)
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(tmp_path / "c.jpg")
    with open(tmp_path / "c.jpg", "rb") as fh:
        arr, colour, _ = read_image(fh, "c.jpg")
    assert colour and arr.shape == (3, 5, 3)


@pytest.mark.parametrize("name, label_shape", [("breastmnist_28.npz", None), ("pneumoniamnist_28.npz", 1)])
def test_medmnist_npz_labels_n_and_n1(name, label_shape):
    path = MEDMNIST / name
    full = np.load(path)
    with open(path, "rb") as fh:
        splits = npz_splits(fh, str(path))
    assert set(splits) == {"train", "val", "test"}
    rows, shape, lshape = splits["train"]
    assert rows == full["train_images"].shape[0] and shape == (28, 28)
    with open(path, "rb") as fh:
        images, labels = read_npz_rows(fh, str(path), "test", 10, 20)
    np.testing.assert_array_equal(images, full["test_images"][10:20])
    assert labels == [int(v) for v in full["test_labels"].reshape(-1)[10:20]]


def test_window_and_minmax_intensity():
    hu = np.array([[-1000.0, 0.0], [40.0, 1000.0]], np.float32)
    win = scale_intensity(hu, window_center=40, window_width=400)  # [-160, 240]
    np.testing.assert_allclose(win, [[0, 0.4], [0.5, 1.0]])
    mm = scale_intensity(hu)
    assert mm.min() == 0.0 and mm.max() == 1.0
    assert (scale_intensity(np.full((3, 3), 7.0)) == 0).all()


def test_16bit_output_keeps_precision_through_resize():
    ramp = np.linspace(0, 1, 512 * 512, dtype=np.float32).reshape(512, 512)
    out = grey_to_output(ramp, bit_depth=16, max_size=256)
    assert out.dtype == np.uint16 and out.shape == (256, 256)
    assert len(np.unique(out)) > 20000  # far beyond the 256 levels an 8-bit path would leave
