"""SimCLR (Chen et al. 2020): two views, a projection head, NT-Xent with the negatives of every rank."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from medscale.trainer.config import ModelSpec
from medscale.trainer.contrastive import ContrastiveMethod, encode_views, head
from medscale.trainer.losses import NTXentLoss
from medscale.trainer.options import SimclrOptions


class SimclrMethod(ContrastiveMethod):
    """SimCLR on a timm backbone: `backbone -> projector -> NT-Xent`."""

    Options = SimclrOptions

    def __init__(self, options: SimclrOptions, spec: ModelSpec, image_size: int) -> None:
        super().__init__(spec, image_size)
        self.projector = head(self.width, options.projector)
        self.criterion = NTXentLoss(options.temperature)

    def forward(self, views: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """`views`: two `[N, C, H, W]` (more are ignored) -> (loss, logs)."""
        z_a, z_b = self.projector(encode_views(self.encoder, views[:2])).chunk(2)
        loss = self.criterion(z_a, z_b)
        return loss, {"loss": loss.detach()}
