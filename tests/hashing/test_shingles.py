"""Local codes: a whole-pixel shift keeps nearly all of them, another image shares few, flat areas give none."""

import numpy as np

from medscale.demo import DEMO_DATA
from medscale.hashing.shingles import local_codes, working_image


def _jaccard(a, b):
    return len(np.intersect1d(a, b)) / len(np.union1d(a, b))


def test_a_shifted_copy_keeps_its_codes_and_another_image_does_not():
    images = np.load(DEMO_DATA / "medmnist" / "pneumoniamnist_28.npz")["test_images"][:50]
    for img, other in zip(images[:-1], images[1:]):
        shifted = np.pad(img, ((2, 0), (2, 0)), mode="edge")[:28, :28]
        assert _jaccard(local_codes(img), local_codes(shifted)) > 0.6
        assert _jaccard(local_codes(img), local_codes(other)) < 0.3  # chest X-rays, all alike


def test_flat_images_have_no_codes_and_large_ones_are_reduced_by_whole_factors():
    assert len(local_codes(np.full((28, 28), 7, np.uint8))) == 0
    assert len(local_codes(np.zeros((2, 2), np.uint8))) == 0
    assert working_image(np.zeros((224, 200, 3), np.uint8)).shape == (44, 40)  # factor 5
    assert working_image(np.zeros((28, 28), np.uint16)).shape == (28, 28)
    codes = local_codes((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    assert codes.dtype == np.uint64 and (codes < 2**18).all() and np.all(np.diff(codes) > 0)
