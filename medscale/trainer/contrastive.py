"""What the contrastive methods share: a timm backbone (ResNet, ViT, any timm name; 1 or 3 channels) whose online
copy is exported, views encoded a resolution at a time, and a picture of the views trained on."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from medscale.trainer.config import ModelSpec
from medscale.trainer.heads import MlpHead
from medscale.trainer.methods import PretrainMethod, timm_backbone
from medscale.trainer.momentum import cosine_momentum, ema_update, frozen_copy
from medscale.trainer.options import HeadOptions

FROZEN_NETWORKS = "keeps frozen networks (a momentum encoder or EMA target), which ZeRO-3 does not restore from " \
                  "its checkpoints"


def head(in_dim: int, options: HeadOptions) -> MlpHead:
    """The MLP head `options` describe on `in_dim` features."""
    return MlpHead(in_dim, options.hidden_dim, options.out_dim, options.layers, options.batch_norm)


def encode_views(encoder: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """`views`: V tensors `[N, C, s_v, s_v]` -> features `[V * N, D]` in view order; consecutive views of one size
    go through the encoder together (one pass for SwAV's large views, one for its small ones)."""
    out: List[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.append(encoder(torch.cat(list(views[start:end]))))
        start = end
    return torch.cat(out)


class ContrastiveMethod(PretrainMethod):
    """A method trained on views of the loader's `contrastive` augmentation; `self.encoder` is the online timm
    backbone (`num_classes=0`: pooled features `[N, self.width]`)."""

    augment = "contrastive"
    fp32_weights = True
    picture_tag = "views"

    def __init__(self, spec: ModelSpec, image_size: int, multi_size: bool = False) -> None:
        super().__init__()
        vit = {"patch_size": spec.patch_size, **({"dynamic_img_size": True} if multi_size else {})}
        self.encoder, self._kwargs = timm_backbone(spec, image_size, **vit)
        self.width = int(self.encoder.num_features)
        self.seed = spec.seed

    def backbone(self) -> nn.Module:
        """The encoder: what is exported."""
        return self.encoder

    def backbone_kwargs(self) -> Dict[str, Any]:
        """The `timm.create_model` keyword arguments that rebuild the encoder."""
        return dict(self._kwargs)

    @torch.no_grad()
    def picture(self, views: Sequence[torch.Tensor], generator: torch.Generator) -> List[torch.Tensor]:
        """One row per view (small views are drawn at the large size)."""
        return list(views)


class PredictorMethod(ContrastiveMethod):
    """BYOL's and MoCo v3's shape: the online `backbone -> projector -> predictor` of each view against a momentum
    copy's `backbone -> projector` of the other, both ways; the copy's momentum rises from `momentum` to 1 along a
    cosine over the run."""

    no_zero3 = FROZEN_NETWORKS

    def __init__(self, spec: ModelSpec, image_size: int, projector: HeadOptions, predictor: HeadOptions,
                 momentum: float, criterion: nn.Module) -> None:
        super().__init__(spec, image_size)
        self.projector = head(self.width, projector)
        self.predictor = head(projector.out_dim, predictor)
        self.criterion = criterion
        self.base_momentum = self.momentum = momentum

    def make_targets(self) -> None:
        """The momentum copies of the backbone and projector (once the online side is final)."""
        self.target_encoder, self.target_projector = frozen_copy(self.encoder), frozen_copy(self.projector)

    def forward(self, views: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """`views`: two `[N, C, H, W]` -> (the loss of each view's prediction of the other's target, summed, logs)."""
        p_a, p_b = self.predictor(self.projector(encode_views(self.encoder, views[:2]))).chunk(2)
        with torch.no_grad():
            t_a, t_b = self.target_projector(encode_views(self.target_encoder, views[:2])).chunk(2)
        loss = self.criterion(p_a, t_b) + self.criterion(p_b, t_a)
        return loss, {"loss": loss.detach(), "momentum": torch.tensor(self.momentum)}

    def begin_step(self, step: int, max_steps: int) -> None:
        """The target's EMA momentum for this step (a cosine rising to 1)."""
        self.momentum = cosine_momentum(step, max_steps, self.base_momentum)

    def end_step(self, step: int, max_steps: int) -> None:
        """The target encoder and projector follow the online ones."""
        ema_update(self.target_encoder, self.encoder, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
