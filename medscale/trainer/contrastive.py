"""What the contrastive methods share: a timm backbone (ResNet, ViT, any timm name; 1 or 3 channels) whose online
copy is exported, views encoded a resolution at a time, and a picture of the views trained on."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn

from medscale.trainer.config import HeadOptions, TrainConfig
from medscale.trainer.heads import MlpHead
from medscale.trainer.methods import PretrainMethod, timm_backbone

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

    def __init__(self, cfg: TrainConfig, image_size: int, multi_size: bool = False) -> None:
        super().__init__()
        vit = {"patch_size": cfg.patch_size, **({"dynamic_img_size": True} if multi_size else {})}
        self.encoder, self._kwargs = timm_backbone(cfg, image_size, **vit)
        self.width = int(self.encoder.num_features)
        self.seed = cfg.seed

    def backbone(self) -> nn.Module:
        return self.encoder

    def backbone_kwargs(self) -> Dict[str, Any]:
        return dict(self._kwargs)

    @torch.no_grad()
    def picture(self, views: Sequence[torch.Tensor], generator: torch.Generator) -> List[torch.Tensor]:
        """One row per view (small views are drawn at the large size)."""
        return list(views)
