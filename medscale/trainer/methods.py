"""Pre-training methods: a method takes a batch and returns its loss and what it wants logged; the engine owns
everything else (optimizer, schedule, checkpoints, logging). Each says which loader augmentation it needs and
which part of it is the backbone to export."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from medscale.core.errors import ConfigError
from medscale.trainer.config import ModelSpec
from medscale.trainer.mae import MaskedAutoencoder
from medscale.trainer.options import MaeOptions

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token")


class PretrainMethod(nn.Module):
    """The method interface. Built as `Method(options, spec, image_size)`: its own options (an instance of its
    `Options` dataclass, the `train.NAME` section; None without one), the backbone's `ModelSpec`, the loader's image
    size. `forward(inputs, generator) -> (loss, {name: scalar tensor})`, where `inputs` is the batch's images
    `[N, C, H, W]` (augment `mae`) or its list of views (augment `contrastive`)."""

    Options: Optional[type] = None  # its options dataclass: the config section of its name

    augment = "mae"  # the loader augmentation this method trains on (unless `loader.augment` says otherwise)
    small_crops = 0  # small views it asks of the loader (SwAV's multi-crop), unless `loader.small_crops` is set
    no_zero3 = ""  # why ZeRO-3 cannot train it (empty: it can)
    fp32_weights = False  # bf16/fp16 as autocast over fp32 weights (EMA targets and per-layer optimizers need them)
    picture_tag = "reconstruction"  # the TensorBoard name of `picture()`
    picture_rows: Tuple[str, ...] = ()  # the names of its rows (default: view 1, view 2...)

    def begin_step(self, step: int, max_steps: int) -> None:
        """Before the forward passes of optimizer step `step` (0-based): schedules that follow the step."""

    def end_step(self, step: int, max_steps: int) -> None:
        """After optimizer step `step` (0-based): momentum targets follow the online weights."""

    def rank_state(self) -> Dict[str, torch.Tensor]:
        """This rank's own state that DeepSpeed does not save (a per-rank queue): saved beside its RNG."""
        return {}

    def load_rank_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what `rank_state` returned."""

    def backbone(self) -> nn.Module:
        """The timm model to export (plain timm loads it back)."""
        raise NotImplementedError

    def backbone_kwargs(self) -> Dict[str, Any]:
        """The `timm.create_model` keyword arguments that rebuild `backbone()`."""
        raise NotImplementedError

    def parameter_groups(self, weight_decay: float) -> list:
        """Optimizer groups: weight decay on weight matrices only (not on biases, norms, position embeddings or
        cls/mask tokens); frozen parameters are left out."""
        decay: List[nn.Parameter] = []
        no_decay: List[nn.Parameter] = []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            plain = param.ndim <= 1 or any(n in name for n in NO_DECAY_NAMES)
            (no_decay if plain else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def timm_backbone(spec: ModelSpec, image_size: int, **vit: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """(`timm.create_model(spec.model, ...)` without a classifier head, its kwargs); `img_size` and the `vit` keyword
    arguments go to models that take them (ViTs), not to those that do not (ResNets); a clear error naming the key
    for a name timm does not know."""
    import timm

    if not timm.is_model(spec.model):
        close = timm.list_models(f"*{spec.model.split('_')[0]}*")[:5]
        raise ConfigError(f"train.model: timm has no model {spec.model!r}" + (f" (e.g. {', '.join(close)})"
                                                                               if close else ""))
    kwargs = {"in_chans": spec.in_chans, "num_classes": 0}
    sized = {"img_size": image_size, **kwargs, **vit}
    try:
        return timm.create_model(spec.model, pretrained=False, **sized), sized
    except TypeError as exc:  # a model without an input size (convolutional networks pool any size)
        if "unexpected keyword argument" not in str(exc):
            raise
    return timm.create_model(spec.model, pretrained=False, **kwargs), kwargs


class MaeMethod(PretrainMethod):
    """MAE: reconstruct the removed 75% of patches from the rest (the MedMAE recipe)."""

    augment = "mae"
    Options = MaeOptions
    picture_rows = ("original", "masked", "reconstruction")

    def __init__(self, options: MaeOptions, spec: ModelSpec, image_size: int) -> None:
        super().__init__()
        if image_size % spec.patch_size:
            raise ConfigError(f"loader.image_size {image_size} is not a multiple of train.patch_size "
                              f"{spec.patch_size}")
        # the pool shapes only the exported feature (training reads every token); no fc_norm keeps `norm` trained
        encoder, self._kwargs = timm_backbone(spec, image_size, patch_size=spec.patch_size,
                                              global_pool=options.pool, fc_norm=False)
        try:
            self.mae = MaskedAutoencoder(encoder, options.decoder_dim, options.decoder_depth, options.decoder_heads,
                                         options.mask_ratio, options.norm_pix_loss)
        except ValueError as exc:
            raise ConfigError(f"train.model {spec.model!r}: {exc}") from exc

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """`images: [N, C, H, W]` -> (loss, logs)."""
        loss, _, mask = self.mae(images, generator)
        return loss, {"loss": loss.detach(), "mask_ratio": mask.mean().detach()}

    def backbone(self) -> nn.Module:
        """The encoder: what is exported."""
        return self.mae.encoder

    def backbone_kwargs(self) -> Dict[str, Any]:
        """The `timm.create_model` keyword arguments that rebuild the encoder."""
        return dict(self._kwargs)

    @torch.no_grad()
    def picture(self, images: torch.Tensor, generator: torch.Generator) -> List[torch.Tensor]:
        """Rows of original / masked / reconstructed images, each `[N, C, H, W]` (the input's normalisation)."""
        loss, pred, mask = self.mae(images, generator)
        masked, pasted = self.mae.reconstruct(images, pred, mask)
        return [images, masked, pasted]
