"""The numpy backend: two-limb products reproduce Pillow's fixed-point arithmetic exactly, in float32 and float64."""

import numpy as np
import pytest

from medscale.hashing.coefficients import resample_matrix
from medscale.hashing.fixedpoint import PRECISION_BITS, combine_limbs, split_limbs
from medscale.hashing.resample import resize_lanczos, resize_many
from tests.conftest import MEDMNIST, needs_native
from tests.conftest import pillow_resize as _pillow


def test_limbs_reassemble_the_coefficients():
    for in_size, out_size in [(28, 32), (224, 8), (224, 9), (640, 8), (5000, 8)]:
        coef = resample_matrix(in_size, out_size)
        hi, lo, _ = split_limbs(coef)
        np.testing.assert_array_equal(256 * hi + lo, coef)
        assert lo.min() >= -128 and lo.max() <= 127


def test_float32_only_where_every_partial_sum_is_exact():
    assert split_limbs(resample_matrix(224, 8))[2] is np.float32
    assert split_limbs(resample_matrix(28, 32))[2] is np.float32  # upsampling: few, large coefficients
    assert split_limbs(resample_matrix(5000, 8))[2] is np.float64  # 1,900 taps: lo sums outgrow 2**24


def test_combine_limbs_is_pillows_rounding():
    rng = np.random.default_rng(0)
    hi = rng.integers(-(1 << 15), 1 << 15, (50, 7))
    lo = rng.integers(-(1 << 16), 1 << 16, (50, 7))
    out = np.empty((50, 7), np.uint8)
    combine_limbs(np.concatenate([hi, lo], axis=1).astype(np.float32), out)
    expected = np.clip((256 * hi + lo + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255)
    np.testing.assert_array_equal(out, expected)


def test_wide_inputs_take_the_float64_path_and_stay_exact():
    small = np.load(MEDMNIST / "pneumoniamnist_28.npz")["test_images"][:6]
    wide = np.tile(small, (1, 1, 200))  # [6, 28, 5600]: 2,100 taps per output
    np.testing.assert_array_equal(resize_lanczos(wide, 8, 9, backend="numpy"), _pillow(wide, 8, 9))


@pytest.mark.parametrize("backend", ["numpy", pytest.param("native", marks=needs_native)])
def test_many_sizes_share_passes_and_each_equals_pillow(backend):
    batch = np.load(MEDMNIST / "pneumoniamnist_28.npz")["test_images"][:40]
    sizes = [(8, 8), (8, 9), (32, 32), (28, 5), (3, 28), (28, 28)]  # shared heights, unchanged axes, identity
    got = resize_many(batch, sizes + [(8, 9)], backend)  # a repeated size once, not stacked twice
    assert sorted(got) == sorted(sizes)
    for height, width in sizes:
        np.testing.assert_array_equal(got[(height, width)], _pillow(batch, height, width), err_msg=str((height, width)))
