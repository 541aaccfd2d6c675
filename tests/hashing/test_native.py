"""The compiled LANCZOS kernel: the same bits as Pillow's arithmetic at every instruction-set level this CPU runs,
Pillow's own pass order for every shape, and clear errors on bad input."""

import os

import numpy as np
import pytest
from PIL import Image

from medscale.hashing import native
from medscale.hashing.coefficients import reference_resize, vertical_first
from medscale.hashing.hashes import _dct_rows, _low_frequencies
from medscale.hashing.resample import resize_many
from tests.conftest import MEDMNIST
from tests.conftest import needs_native as built
from tests.conftest import pillow_resize as _pillow

LEVELS = native.levels() or (0,)


def test_the_kernel_is_built_where_ci_requires_it():
    if os.environ.get("MEDSCALE_REQUIRE_NATIVE") and not native.available():
        pytest.fail("medscale.hashing._lanczos did not build: check that gcc and the Python headers are installed")
    assert native.available() == bool(native.levels())


def _cases():
    rng = np.random.default_rng(0)
    real = np.load(MEDMNIST / "pneumoniamnist_28.npz")["test_images"][:20]
    big = np.stack([np.asarray(Image.fromarray(i).resize((224, 224), Image.BICUBIC)) for i in real[:3]])
    return [
        ("medmnist 28", real, [(8, 8), (8, 9), (32, 32)]),
        ("224 px", big, [(8, 8), (8, 9), (32, 32)]),
        ("odd sizes", rng.integers(0, 256, (5, 37, 61), dtype=np.uint8), [(5, 70), (40, 3), (37, 9), (7, 61)]),
        ("narrow", rng.integers(0, 256, (4, 300, 5), dtype=np.uint8), [(8, 8), (17, 5)]),  # w < 8, odd pairs
        ("one row", rng.integers(0, 256, (3, 1, 40), dtype=np.uint8), [(8, 8), (1, 13)]),
        ("16 rows exactly", rng.integers(0, 256, (3, 16, 16), dtype=np.uint8), [(8, 8), (32, 32)]),
    ]


@built
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name,images,sizes", _cases(), ids=[c[0] for c in _cases()])
def test_every_level_computes_pillows_arithmetic_exactly(level, name, images, sizes):
    got = native.resize_many_native(images, sizes, level=level)
    for height, width in sizes:
        expected = np.stack([reference_resize(i, height, width) for i in images])  # horizontal pass first
        np.testing.assert_array_equal(got[(height, width)], expected, err_msg=f"{name} -> {height}x{width}")
        assert got[(height, width)].flags.c_contiguous


@pytest.mark.parametrize("backend", [pytest.param("native", marks=built), "numpy"])
def test_shapes_pillow_resizes_vertical_pass_first_are_still_exact(backend):
    rng = np.random.default_rng(1)
    for shape, size in [((64, 32), (16, 16)), ((300, 5), (8, 8)), ((40, 40), (20, 80)), ((32, 64), (16, 16))]:
        images = rng.integers(0, 256, (4,) + shape, dtype=np.uint8)
        got = resize_many(images, [size], backend)[size]
        np.testing.assert_array_equal(got, _pillow(images, *size), err_msg=f"{shape} -> {size}")


def test_pass_order_probe_agrees_with_pillow():
    probe = np.random.default_rng(2).integers(0, 256, (64, 32), dtype=np.uint8)
    for size in [(16, 16), (8, 9), (70, 20)]:
        order = vertical_first(64, 32, *size)
        np.testing.assert_array_equal(reference_resize(probe, *size, vertical_first=order),
                                      _pillow(probe[None], *size)[0])
    assert vertical_first(28, 28, 28, 9) is False  # one pass only: nothing to order


@built
@pytest.mark.parametrize("level", LEVELS)
def test_phash_dct_corner_and_median_match_numpy(level):
    pixels = resize_many(np.load(MEDMNIST / "pneumoniamnist_28.npz")["test_images"][:200], [(32, 32)])[(32, 32)]
    low, median = native.phash_low_native(pixels, _dct_rows(32, 8), level=level)
    expected = _low_frequencies(pixels.astype(np.float64), 8).reshape(len(pixels), -1)
    np.testing.assert_allclose(low, expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(median, np.median(expected, axis=1), rtol=1e-12, atol=1e-9)
    assert np.array_equal(median, np.median(low, axis=1))  # the selection is numpy's median of the same values


def test_bad_requests_are_clear_errors():
    images = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="unknown resize backend 'gpu'"):
        resize_many(images, [(8, 8)], backend="gpu")
    with pytest.raises(ValueError, match=r"expected \[N, H, W\] uint8"):
        resize_many(images.astype(np.float32), [(8, 8)])
    if native.available():
        with pytest.raises(ValueError, match="level 2 is not available"):
            native.resize_many_native(images, [(8, 8)], level=2)


@built
def test_the_kernel_checks_every_window_against_the_buffers():
    from medscale.hashing import _lanczos

    images = np.zeros((1, 4, 4), np.uint8)
    start, taps = np.array([2], np.int32), np.array([3], np.int32)  # [2, 5) lies outside a 4-pixel row
    with pytest.raises(ValueError, match=r"horizontal window 0 \[2, 5\) lies outside \[0, 4\)"):
        _lanczos.resize(images, 1, 4, 4, start, taps, np.zeros(6), [], 0)
    with pytest.raises(ValueError, match="images holds 16 bytes, needs 32"):
        _lanczos.resize(images, 2, 4, 4, start[:0], taps[:0], np.zeros(0), [], 0)
