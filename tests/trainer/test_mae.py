"""MAE's pieces against closed forms and hand computations: position embeddings, patches, masking, the loss."""

import math

import numpy as np
import pytest
import timm
import torch

from medscale.trainer.mae import (
    MaskedAutoencoder,
    masked_patch_loss,
    normalise_patches,
    patchify,
    random_masking,
    sincos_2d,
    unpatchify,
)


def _tiny(norm_pix: bool = False, channels: int = 3) -> MaskedAutoencoder:
    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                                in_chans=channels, num_classes=0, depth=2)
    return MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=1, decoder_heads=4, mask_ratio=0.75,
                             norm_pix_loss=norm_pix)


def test_sincos_position_embedding_closed_form():
    emb = sincos_2d(8, 2, 3)  # dim 8: 4 for the row, 4 for the column; each half sin then cos, 2 frequencies
    assert emb.shape == (1 + 6, 8) and not emb[0].any()  # the cls position is zero
    row, col = 1, 2  # patch (1, 2) is index 1 + 1 * 3 + 2
    omega = [1.0, 1.0 / 100.0]  # 1 / 10000^(i / 2) for i in 0, 1
    expected = [math.sin(row * omega[0]), math.sin(row * omega[1]), math.cos(row * omega[0]),
                math.cos(row * omega[1]), math.sin(col * omega[0]), math.sin(col * omega[1]),
                math.cos(col * omega[0]), math.cos(col * omega[1])]
    np.testing.assert_allclose(emb[1 + 1 * 3 + 2], expected, rtol=1e-6)


def test_patchify_round_trip_and_layout():
    imgs = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(imgs, 4)
    assert patches.shape == (2, 4, 48)
    torch.testing.assert_close(unpatchify(patches, 4, 3, 8, 8), imgs)
    # patch 1 is the top-right 4x4 block; its first entry is pixel (0, 4) of channel 0, then channel 1...
    assert patches[0, 1, :3].tolist() == [imgs[0, 0, 0, 4].item(), imgs[0, 1, 0, 4].item(), imgs[0, 2, 0, 4].item()]


def test_random_masking_keeps_a_quarter_and_restores_the_order():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1)
    gen = torch.Generator().manual_seed(3)
    kept, mask, ids_restore = random_masking(x, 0.75, gen)
    assert kept.shape == (2, 4, 1) and mask.sum(dim=1).tolist() == [12.0, 12.0]
    for n in range(2):  # the kept tokens are exactly the unmasked positions
        assert sorted(kept[n, :, 0].tolist()) == sorted(x[n, mask[n] == 0, 0].tolist())
    gen2 = torch.Generator().manual_seed(3)
    assert torch.equal(random_masking(x, 0.75, gen2)[1], mask)  # same generator state, same mask


def test_the_loss_is_the_mean_squared_error_of_the_masked_patches_only():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [3.0, 3.0]]])
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # patches 0 and 2 were removed
    # patch 0: (1 + 1) / 2 = 1; patch 2: (9 + 9) / 2 = 9; patch 1 is visible and does not count
    assert masked_patch_loss(pred, target, mask).item() == pytest.approx((1 + 9) / 2)
    patch = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    mean, var = 3.0, ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3  # unbiased variance
    expected = [(v - mean) / math.sqrt(var + 1e-6) for v in (1.0, 2.0, 3.0, 6.0)]
    torch.testing.assert_close(normalise_patches(patch)[0, 0], torch.tensor(expected))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_forward_loss_on_a_known_input_matches_a_hand_computation(norm_pix):
    mae = _tiny(norm_pix).eval()
    torch.manual_seed(1)
    imgs = torch.randn(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    loss, pred, mask = mae(imgs, gen)
    assert pred.shape == (2, 16, 48) and mask.shape == (2, 16) and mask.sum().item() == 2 * 12
    total, count = 0.0, 0
    for n in range(2):
        for row in range(4):
            for col in range(4):
                index = row * 4 + col
                if mask[n, index] == 0:
                    continue
                block = imgs[n, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4].permute(1, 2, 0).reshape(-1)
                if norm_pix:
                    block = (block - block.mean()) / (block.var(unbiased=True) + 1e-6) ** 0.5
                total += ((pred[n, index] - block) ** 2).mean().item()
                count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_the_encoder_stays_a_plain_timm_model_with_fixed_position_embeddings():
    mae = _tiny()
    assert not mae.encoder.pos_embed.requires_grad
    np.testing.assert_allclose(mae.encoder.pos_embed[0].numpy(), sincos_2d(192, 4, 4), atol=1e-7)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, num_classes=0,
                              depth=2)
    plain.load_state_dict(mae.encoder.state_dict())  # same keys and shapes: exports load in plain timm
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(plain.eval()(x), mae.encoder.eval()(x))


def test_one_channel_inputs():
    mae = _tiny(channels=1)
    loss, pred, _ = mae(torch.randn(2, 1, 16, 16), torch.Generator().manual_seed(0))
    assert pred.shape == (2, 16, 16) and torch.isfinite(loss)
