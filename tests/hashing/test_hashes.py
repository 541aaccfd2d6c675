"""Batched perceptual hashes are bit-identical to imagehash on real images (grey, RGB, odd sizes, 16 and 64 bits)."""

import imagehash
import numpy as np
import pydicom
import pytest
from PIL import Image

from medscale.hashing.hashes import average_hash, dhash, hamming, phash, resize_lanczos
from tests.conftest import MEDMNIST, PYDICOM_DATA

PAIRS = [(average_hash, imagehash.average_hash), (dhash, imagehash.dhash), (phash, imagehash.phash)]


def _real_batches():
    small = np.load(MEDMNIST / "pneumoniamnist_28.npz")["test_images"][:200]
    odd = np.stack([np.asarray(Image.fromarray(i).resize((53, 37), Image.BICUBIC)) for i in small[:50]])
    mr = pydicom.dcmread(PYDICOM_DATA / "emri_small.dcm").pixel_array.astype(np.float32)
    mr = np.rint(255 * (mr - mr.min()) / (mr.max() - mr.min())).astype(np.uint8)  # [10, 64, 64]
    us = pydicom.dcmread(PYDICOM_DATA / "color3d_jpeg_baseline.dcm").pixel_array[:8]  # [8, 480, 640, 3] RGB
    return {"medmnist28": small, "odd53x37": odd, "mr64": mr, "us_rgb": us}


@pytest.mark.parametrize("backend", ["auto", "numpy"])  # the compiled kernel (where built) and the numpy fallback
@pytest.mark.parametrize("hash_size", [8, 4])
def test_bit_identical_to_imagehash(hash_size, backend):
    for name, batch in _real_batches().items():
        for ours, theirs in PAIRS:
            got = ours(batch, hash_size=hash_size, backend=backend)
            expected = [str(theirs(Image.fromarray(img), hash_size=hash_size)) for img in batch]
            assert [bytes(h).hex() for h in got] == expected, (name, ours.__name__)


def test_torch_batches_hash_like_numpy_channels_first_too():
    torch = pytest.importorskip("torch")
    batches = _real_batches()
    grey, rgb = batches["mr64"], batches["us_rgb"][:3]
    for ours, _ in PAIRS:
        np.testing.assert_array_equal(ours(torch.from_numpy(grey)), ours(grey))
        np.testing.assert_array_equal(ours(torch.from_numpy(grey)[:, None]), ours(grey))  # [N, 1, H, W]
        np.testing.assert_array_equal(ours(torch.from_numpy(rgb).permute(0, 3, 1, 2)), ours(rgb))  # [N, 3, H, W]
    with pytest.raises(ValueError, match="hashes need uint8 pixels"):
        average_hash(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"expected a batch \[N, H, W\]"):
        average_hash(np.zeros((28, 28), np.uint8))


def test_resize_equals_pillow_lanczos():
    batch = _real_batches()["mr64"]
    for size in [(9, 8), (32, 32), (100, 70)]:
        ref = np.stack([np.asarray(Image.fromarray(i).resize(size, Image.LANCZOS)) for i in batch])
        np.testing.assert_array_equal(resize_lanczos(batch, size[1], size[0]), ref)


def test_hamming_distance():
    a = np.array([[0b10110000, 0xFF]], np.uint8)
    b = np.array([[0b00110001, 0x0F]], np.uint8)
    assert hamming(a, b).tolist() == [2 + 4]
    img = _real_batches()["medmnist28"][:1]
    assert hamming(dhash(img), dhash(img)).tolist() == [0]


def test_bit_identical_on_degenerate_images():
    """Flat, mirror-symmetric and two-level images put DCT coefficients on the median: the exact fallback path."""
    flat = np.full((28, 28), 77, np.uint8)
    ramp = np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))
    mirror = np.concatenate([ramp[:, :14], ramp[:, :14][:, ::-1]], axis=1)
    halves = np.zeros((28, 28), np.uint8)
    halves[:, 14:] = 255
    batch = np.stack([flat, ramp, mirror, halves, np.zeros((28, 28), np.uint8)])
    for ours, theirs in PAIRS:
        expected = [str(theirs(Image.fromarray(img))) for img in batch]
        assert [bytes(h).hex() for h in ours(batch)] == expected, ours.__name__


def test_hash_images_shares_the_resize_and_matches_imagehash():
    """Mixed shapes, RGB and 16-bit slices in one call: one shared horizontal pass per shape, same bits."""
    from medscale.hashing.hashes import hash_images

    batches = _real_batches()
    images = list(batches["medmnist28"][:20]) + list(batches["odd53x37"][:10]) + list(batches["us_rgb"][:2])
    sixteen = batches["mr64"][:3].astype(np.uint16) * 257  # stored 16-bit: hashed from its top 8 bits
    got = hash_images(images + list(sixteen))
    reference = images + list(batches["mr64"][:3])
    for name, fn in [("ahash", imagehash.average_hash), ("dhash", imagehash.dhash), ("phash", imagehash.phash)]:
        assert [f"{int(v):016x}" for v in got[name]] == [str(fn(Image.fromarray(i))) for i in reference], name


def test_hash_images_takes_the_backend_and_names_from_the_registry():
    from medscale.hashing.hashes import HASH_NAMES, hash_images

    batch = list(_real_batches()["odd53x37"][:10])
    native, fallback = hash_images(batch, backend="auto"), hash_images(batch, backend="numpy")
    assert set(native) == set(HASH_NAMES) and all((native[n] == fallback[n]).all() for n in HASH_NAMES)
    with pytest.raises(ValueError, match="unknown hash 'bhash'"):
        hash_images(batch, ("bhash",))
