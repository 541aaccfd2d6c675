"""The methods as modules (one process, plain torch): every one learns a fixed tiny set, builds on ResNets and ViTs
with 1 or 3 channels and exports a backbone plain timm rebuilds; MoCo's queue; the optimizer factory's rules."""

import copy

import numpy as np
import pytest
import timm
import torch

from medscale.core.errors import ConfigError
from medscale.data.augment import contrastive_transform
from medscale.demo import DEMO_DATA
from medscale.trainer.config import TrainConfig
from medscale.trainer.options import HeadOptions
from medscale.trainer.registry import METHODS, create_method, train_config
from medscale.trainer.zero import client_optimizer, deepspeed_config

CONTRASTIVE = [name for name in METHODS if name != "mae"]


def small_config(method: str, model: str = "resnet18", in_chans: int = 1, **train) -> TrainConfig:
    """A config with narrow heads, a short queue and few prototypes (fast on 2 cores)."""
    cfg = train_config(method=method, model=model, in_chans=in_chans, patch_size=4, **train)
    for name in CONTRASTIVE:
        options = getattr(cfg, name)
        for head in ("projector", "predictor"):
            if hasattr(options, head):
                setattr(options, head, HeadOptions(128, 32, getattr(options, head).layers,
                                                   getattr(options, head).batch_norm))
    cfg.moco.queue_size, cfg.swav.prototypes, cfg.swav.small_crops = 16, 20, 2
    cfg.swav.freeze_prototypes_steps, cfg.swav.queue_size, cfg.swav.queue_start_step = 3, 8, 1
    cfg.mae.decoder_dim, cfg.mae.decoder_depth, cfg.mae.decoder_heads = 64, 1, 4
    return cfg


def _inputs(model, generator: torch.Generator):
    """A batch of 4 for `model`: images `[4, 3, 16, 16]` (augment mae) or its views (the small ones 8 px)."""
    if model.augment == "mae":
        return torch.randn(4, 3, 16, 16, generator=generator)
    return [torch.randn(4, 3, 16, 16, generator=generator) for _ in range(2)] + [
        torch.randn(4, 3, 8, 8, generator=generator) for _ in range(model.small_crops)]


def _steps(model, optimizer, steps, max_steps: int = 10) -> list:
    """Optimizer steps `steps` on fixed random batches (one per step); their losses."""
    losses = []
    for step in steps:
        model.begin_step(step, max_steps)
        loss, _ = model(_inputs(model, torch.Generator().manual_seed(step)), torch.Generator().manual_seed(99 + step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.end_step(step, max_steps)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("method", CONTRASTIVE)
def test_every_method_learns_a_fixed_tiny_set(method):
    """32 real ultrasound images, their views drawn once, two batches of 16 in turn: the loss falls (MoCo's queue
    holds the other batch's keys)."""
    torch.manual_seed(0)
    model = create_method(method, small_config(method), 32)
    images = np.load(DEMO_DATA / "medmnist" / "breastmnist_28.npz")["train_images"][:32]
    views = contrastive_transform(32, 16, model.small_crops, channels=1)
    batches = [[torch.stack(v) for v in zip(*[views(im) for im in images[i:i + 16]])] for i in (0, 16)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(20):
        model.begin_step(step, 20)
        loss, logs = model(batches[step % 2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.end_step(step, 20)
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and float(logs["loss"]) == losses[-1]
    early, late = np.mean(losses[2:6]), np.mean(losses[-4:])  # step 0-1: MoCo's queue is still random
    assert late < 0.92 * early, losses


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_builds_on_a_vit_with_3_channels_and_exports_for_plain_timm(method):
    torch.manual_seed(0)
    model = create_method(method, small_config(method, "vit_tiny_patch16_224", 3), 16)
    model.begin_step(0, 10)
    loss, _ = model(_inputs(model, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and model.backbone().blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    rebuilt = timm.create_model("vit_tiny_patch16_224", pretrained=False, **model.backbone_kwargs())
    rebuilt.load_state_dict(model.backbone().state_dict())
    assert model.backbone_kwargs()["img_size"] == 16 and rebuilt(torch.randn(1, 3, 16, 16)).shape == (1, 192)


def test_an_mae_export_pooled_over_patch_tokens_is_their_mean_after_the_trained_norm():
    """`train.mae.pool=avg`: plain timm rebuilds the export with the same weights, and its feature is the mean of the
    normed patch tokens (the cls token left out); `token` gives the cls token; the state dicts are the same."""
    torch.manual_seed(0)
    images = torch.randn(2, 1, 16, 16)
    features = {}
    for pool in ("token", "avg"):
        cfg = small_config("mae", "vit_tiny_patch16_224", 1)
        cfg.mae.pool = pool
        model = create_method("mae", cfg, 16)
        rebuilt = timm.create_model("vit_tiny_patch16_224", pretrained=False, **model.backbone_kwargs()).eval()
        rebuilt.load_state_dict(model.backbone().state_dict())
        tokens = rebuilt.forward_features(images)  # [N, 1 + L, D], normed
        features[pool] = rebuilt(images)
        expected = tokens[:, 1:].mean(dim=1) if pool == "avg" else tokens[:, 0]
        torch.testing.assert_close(features[pool], expected)
    assert not torch.allclose(features["token"], features["avg"])


def test_an_unknown_mae_pool_is_refused_naming_the_key():
    cfg = small_config("mae", "vit_tiny_patch16_224", 1)
    cfg.mae.pool = "max"
    with pytest.raises(ConfigError, match=r"train\.mae\.pool"):
        cfg.mae.validate("test", "train.mae")


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_resumes_exactly_from_its_saved_state(method):
    """Two steps, the state saved (weights and buffers, optimizer, the rank's own state); two more steps; a model
    built from another seed and restored repeats those two steps bit for bit (queues, targets, schedules)."""
    cfg = small_config(method, "vit_tiny_patch16_224", 3)
    torch.manual_seed(0)
    model = create_method(method, cfg, 16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    _steps(model, optimizer, range(2))
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), model.rank_state()))
    torch.manual_seed(5)
    straight = _steps(model, optimizer, range(2, 4))
    torch.manual_seed(1)
    other = create_method(method, cfg, 16)
    other_optimizer = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=1e-3)
    other.load_state_dict(saved[0])
    other_optimizer.load_state_dict(saved[1])
    other.load_rank_state(saved[2])
    torch.manual_seed(5)
    assert _steps(other, other_optimizer, range(2, 4)) == straight


def test_a_resnet_takes_no_image_size_and_mocov3_freezes_only_a_vits_patch_embedding():
    resnet = create_method("mocov3", small_config("mocov3"), 32)
    assert "img_size" not in resnet.backbone_kwargs() and all(p.requires_grad for p in resnet.encoder.parameters())
    vit = create_method("mocov3", small_config("mocov3", "vit_tiny_patch16_224", 3), 16)
    frozen = {n for n, p in vit.encoder.named_parameters() if not p.requires_grad}
    assert frozen == {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert not any(p.requires_grad for p in vit.target_encoder.parameters())


def test_moco_queue_takes_every_key_in_turn_and_wraps():
    model = create_method("moco", small_config("moco"), 32)  # a queue of 16 keys of width 32
    eye = torch.eye(32)
    for step in range(3):  # 6 keys a step, key i pointing along axis i
        model._pending.append(eye[6 * step:6 * step + 6] * 5.0)
        model.end_step(step, 10)
    assert int(model.queue_ptr) == 18 % 16
    assert model.queue.argmax(1).tolist() == [16, 17] + list(range(2, 16))  # the oldest two were overwritten
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(16))


def test_optimizers_come_from_timm_and_per_tensor_ones_refuse_zero_partitions():
    params = [{"params": [torch.nn.Parameter(torch.randn(4, 4))], "weight_decay": 0.1}]
    assert client_optimizer(TrainConfig(optimizer="adamw"), params, 0.1) is None  # DeepSpeed's fused AdamW
    sgd = client_optimizer(TrainConfig(optimizer="momentum", momentum=0.8), params, 0.1)
    assert type(sgd).__name__ == "SGD" and sgd.param_groups[0]["momentum"] == 0.8
    assert sgd.param_groups[0]["weight_decay"] == 0.1 and not sgd.param_groups[0]["nesterov"]
    lars = client_optimizer(TrainConfig(optimizer="lars", zero_stage=0), params, 0.1)
    assert type(lars).__name__ == "Lars"
    with pytest.raises(ConfigError, match="adapts each tensor as a whole.*train.zero_stage=0"):
        client_optimizer(TrainConfig(optimizer="lamb", zero_stage=2), params, 0.1)
    with pytest.raises(ConfigError, match="timm has no optimizer 'adamz'"):
        client_optimizer(TrainConfig(optimizer="adamz"), params, 0.1)


def test_reduced_precision_of_fp32_weight_methods_is_autocast():
    ds = deepspeed_config(TrainConfig(), 8, 2, "bf16", 1e-3, client=True, autocast=True)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and not ds["bf16"]["enabled"]
    assert "optimizer" not in ds and ds["zero_allow_untested_optimizer"]
    mae = deepspeed_config(TrainConfig(), 8, 2, "bf16", 1e-3)
    assert mae["bf16"]["enabled"] and "torch_autocast" not in mae and mae["optimizer"]["type"] == "AdamW"
