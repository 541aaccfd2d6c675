"""BYOL (Grill et al. 2020): an online network with a predictor regresses an EMA target's projections of the
other view; the target's momentum rises from `byol.momentum` to 1 along a cosine."""

from __future__ import annotations

from medscale.trainer.config import ModelSpec
from medscale.trainer.contrastive import PredictorMethod
from medscale.trainer.losses import NormalizedMSELoss
from medscale.trainer.options import ByolOptions


class ByolMethod(PredictorMethod):
    """BYOL on a timm backbone: online `backbone -> projector -> predictor`, target `backbone -> projector` (EMA),
    `2 - 2 cos` both ways."""

    Options = ByolOptions

    def __init__(self, options: ByolOptions, spec: ModelSpec, image_size: int) -> None:
        super().__init__(spec, image_size, options.projector, options.predictor, options.momentum,
                         NormalizedMSELoss())
        self.make_targets()
