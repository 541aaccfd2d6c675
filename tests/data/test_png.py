"""The vectorised PNG encoder is lossless for every pixel type a shard stores (decoded back by PIL)."""

import io

import numpy as np
import pytest
from PIL import Image

from medscale.data.png import encode_png
from tests.conftest import MEDMNIST


@pytest.mark.parametrize("shape, dtype", [((28, 28), np.uint8), ((17, 31), np.uint16), ((9, 5, 3), np.uint8),
                                          ((1, 1), np.uint8)])
def test_round_trip_through_pil(shape, dtype):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    back = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, pixels)


def test_real_images_round_trip_and_compress():
    images = np.load(MEDMNIST / "pneumoniamnist_28.npz")["test_images"][:50]
    for img in images:
        data = encode_png(img)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), img)
        assert len(data) < img.size + 100


def test_rejects_unsupported_pixels():
    with pytest.raises(ValueError, match="cannot encode"):
        encode_png(np.zeros((4, 4), np.float32))


def test_fast_decoder_round_trips_and_falls_back_to_pil():
    from medscale.data.png import _decode_up_filtered, decode_png, encode_png

    rng = np.random.default_rng(0)
    for arr in [rng.integers(0, 256, (37, 53), dtype=np.uint8), rng.integers(0, 65536, (20, 31), dtype=np.uint16),
                rng.integers(0, 256, (1, 7), dtype=np.uint8), rng.integers(0, 256, (300, 64), dtype=np.uint8),
                rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)]:  # any height: the scan runs in log2(H) steps
        data = encode_png(arr)
        assert _decode_up_filtered(data) is not None
        out = decode_png(data)
        assert out.dtype == arr.dtype and np.array_equal(out, arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # PIL's own adaptive filters: the PIL path
    assert _decode_up_filtered(buf.getvalue()) is None and np.array_equal(decode_png(buf.getvalue()), arr)
    damaged = bytearray(encode_png(arr))
    damaged[45:49] = b"\xff\xff\xff\xff"  # inside the compressed stream: the inflate error is caught, not raised
    assert _decode_up_filtered(bytes(damaged)) is None
