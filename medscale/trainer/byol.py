"""BYOL (Grill et al. 2020): an online network with a predictor regresses an EMA target's projections of the
other view; the target's momentum rises from `byol.momentum` to 1 along a cosine."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from medscale.trainer.config import TrainConfig
from medscale.trainer.contrastive import FROZEN_NETWORKS, ContrastiveMethod, encode_views, head
from medscale.trainer.losses import NormalizedMSELoss
from medscale.trainer.momentum import cosine_momentum, ema_update, frozen_copy


class ByolMethod(ContrastiveMethod):
    """BYOL on a timm backbone: online `backbone -> projector -> predictor`, target `backbone -> projector` (EMA)."""

    no_zero3 = FROZEN_NETWORKS

    def __init__(self, cfg: TrainConfig, image_size: int) -> None:
        super().__init__(cfg, image_size)
        self.base_momentum = cfg.byol.momentum
        self.projector = head(self.width, cfg.byol.projector)
        self.predictor = head(cfg.byol.projector.out_dim, cfg.byol.predictor)
        self.target_encoder, self.target_projector = frozen_copy(self.encoder), frozen_copy(self.projector)
        self.criterion = NormalizedMSELoss()
        self.momentum = self.base_momentum

    def forward(self, views: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """`views`: two `[N, C, H, W]` -> (symmetric loss: each view's prediction of the other's target, logs)."""
        p_a, p_b = self.predictor(self.projector(encode_views(self.encoder, views[:2]))).chunk(2)
        with torch.no_grad():
            t_a, t_b = self.target_projector(encode_views(self.target_encoder, views[:2])).chunk(2)
        loss = self.criterion(p_a, t_b) + self.criterion(p_b, t_a)
        return loss, {"loss": loss.detach(), "momentum": torch.tensor(self.momentum)}

    def begin_step(self, step: int, max_steps: int) -> None:
        self.momentum = cosine_momentum(step, max_steps, self.base_momentum)

    def end_step(self, step: int, max_steps: int) -> None:
        ema_update(self.target_encoder, self.encoder, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
