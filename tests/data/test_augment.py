"""Augmentation recipes: shapes, grey handled on one channel then repeated, 16-bit precision kept to the crop."""

import numpy as np
import pytest
import torch

from medscale.data.augment import contrastive_transform, mae_transform, resize_transform, to_tensor


def test_to_tensor_keeps_16_bit_precision():
    x = np.arange(0, 65536, 7, dtype=np.uint16)[:9000].reshape(90, 100)
    t = to_tensor(x, channels=1)
    assert t.dtype == torch.float32 and t.shape == (1, 90, 100)
    assert len(torch.unique(t)) == 9000 and float(t.max()) <= 1.0


def test_grey_and_rgb_give_the_same_shapes():
    grey = (np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for tf in (mae_transform(32), resize_transform(32)):
        assert tf(grey).shape == tf(rgb).shape == (3, 32, 32)
    views = contrastive_transform(32, 16, small_crops=2)(grey)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2


def test_grey_channels_are_identical_and_match_the_rgb_path():
    grey = (np.random.default_rng(1).random((40, 40)) * 255).astype(np.uint8)
    plain = resize_transform(24, mean=[0, 0, 0], std=[1, 1, 1])
    out = plain(grey)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    torch.testing.assert_close(out, plain(np.repeat(grey[..., None], 3, axis=2)))
    torch.manual_seed(0)
    a = mae_transform(24, mean=[0, 0, 0], std=[1, 1, 1])(grey)
    assert torch.equal(a[0], a[2])


def test_every_configurable_augmentation_has_its_torch_transform():
    from medscale.data.augment import TRANSFORMS
    from medscale.data.config import AUGMENTS, LoaderConfig

    assert set(TRANSFORMS) == set(AUGMENTS)
    for name in AUGMENTS:
        out = TRANSFORMS[name](LoaderConfig(augment=name, image_size=16, small_size=8))(np.zeros((20, 20), np.uint8))
        assert (out[0] if isinstance(out, list) else out).shape[-1] == 16


def test_uint8_batches_normalise_on_the_training_side_like_the_float_path():
    import torch

    from medscale.data.augment import normalize_batch

    pixels = (np.arange(40 * 40) % 251).astype(np.uint8).reshape(40, 40)
    torch.manual_seed(3)
    as_float = mae_transform(16)(pixels)
    torch.manual_seed(3)
    as_uint8 = mae_transform(16, output="uint8")(pixels)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (1, 16, 16)  # grey crosses as one channel
    back = normalize_batch(as_uint8[None], channels=3)[0]
    assert back.shape == as_float.shape
    torch.testing.assert_close(back, as_float)  # 8-bit slices are cropped as bytes on both paths
    assert torch.equal(normalize_batch(as_float[None]), as_float[None])
    with pytest.raises(ValueError, match="3-channel images cannot feed a 1-channel model"):
        normalize_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), channels=1)


def test_uint8_batches_mix_grey_and_rgb_slices_and_average_rgb_for_one_channel_models():
    from medscale.data.dataset import collate_samples

    grey = (np.arange(20 * 20) % 256).astype(np.uint8).reshape(20, 20)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=2)
    tf = resize_transform(8, output="uint8")
    batch = collate_samples([{"image": tf(grey), "label": 0}, {"image": tf(rgb), "label": 1}])
    assert batch["image"].shape == (2, 3, 8, 8) and torch.equal(batch["image"][0, 0], batch["image"][0, 2])
    assert collate_samples([{"image": tf(grey)}] * 2)["image"].shape == (2, 1, 8, 8)
    one = resize_transform(8, channels=1, output="uint8")(rgb)
    assert one.shape == (1, 8, 8) and one.dtype == torch.uint8
    views = contrastive_transform(8, 4, small_crops=1, output="uint8")
    batch = collate_samples([{"views": views(grey)}, {"views": views(rgb)}])
    assert [tuple(v.shape) for v in batch["views"]] == [(2, 3, 8, 8)] * 2 + [(2, 3, 4, 4)]


def test_a_trainer_fills_in_views_and_channels_and_the_config_wins_where_set():
    from medscale.data.augment import TRANSFORMS
    from medscale.data.config import LoaderConfig

    swav = LoaderConfig(image_size=16, small_size=8).for_model("contrastive", 2, 1)
    assert (swav.augment, swav.small_crops, swav.channels) == ("contrastive", 2, 1)
    views = TRANSFORMS[swav.augment](swav)(np.zeros((20, 20), np.uint8))
    assert [tuple(v.shape) for v in views] == [(1, 16, 16)] * 2 + [(1, 8, 8)] * 2
    mine = LoaderConfig(augment="contrastive", small_crops=0, channels=3).for_model("contrastive", 6, 1)
    assert (mine.small_crops, mine.channels) == (0, 3)


def test_contrastive_crop_scales_bound_the_crop_area():
    grey = np.zeros((64, 64), np.uint8)
    grey[:, 32:] = 255  # half black, half white: a crop of at least 90% of the area holds both
    torch.manual_seed(0)

    def both_halves(scale):
        views = [contrastive_transform(16, crop_scale=scale, channels=1, mean=[0], std=[1])(grey)[0]
                 for _ in range(20)]
        return sum(float(v.max() - v.min()) > 0.3 for v in views)

    assert both_halves((0.9, 1.0)) == 20 and both_halves((0.01, 0.02)) < 5  # small crops mostly miss the edge


def test_colour_views_of_rgb_frames_stay_finite():
    """Bicubic crops overshoot below 0 at sharp edges; where one channel stays 0 the colour jitter's HSV conversion
    divided by a zero maximum and gave NaN (an RGB ultrasound frame of the demo corpus did, at step 411)."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, ::4, :2] = 237  # sharp stripes in red and green, blue all 0
    transform = contrastive_transform(32, 16, small_crops=2, channels=1)
    for seed in range(30):
        torch.manual_seed(seed)
        assert all(torch.isfinite(v).all() for v in transform(rgb)), seed
