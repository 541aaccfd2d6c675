"""SwAV (Caron et al. 2020): embeddings of every view are scored against learnt prototypes; the Sinkhorn-Knopp codes
of each large view are predicted from every other view (swapped prediction), over multi-crop views."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from medscale.trainer.config import ModelSpec
from medscale.trainer.contrastive import ContrastiveMethod, encode_views, head
from medscale.trainer.heads import Prototypes
from medscale.trainer.losses import SwavLoss
from medscale.trainer.options import SwavOptions

ASSIGN = (0, 1)  # the views whose codes are predicted: the two large ones


class SwavMethod(ContrastiveMethod):
    """SwAV on a timm backbone: `backbone -> projector -> unit length -> prototypes`; the prototypes get no gradient
    for `swav.freeze_prototypes_steps` steps; an optional per-rank queue of earlier embeddings enlarges the batch the
    codes are computed over."""

    no_zero3 = "normalises its prototypes in place, which ZeRO-3's partitioned parameters do not allow"

    Options = SwavOptions

    def __init__(self, options: SwavOptions, spec: ModelSpec, image_size: int) -> None:
        super().__init__(spec, image_size, multi_size=True)
        self.options = options
        self.small_crops = options.small_crops
        self.projector = head(self.width, options.projector)
        self.prototypes = Prototypes(options.projector.out_dim, options.prototypes)
        self.criterion = SwavLoss(options.temperature, options.sinkhorn_eps, options.sinkhorn_iters)
        # this rank's queue (SwAV keeps one per rank): saved in the rank's own state, not DeepSpeed's
        self.register_buffer("queue", torch.zeros(len(ASSIGN), options.queue_size, options.projector.out_dim),
                             persistent=False)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long), persistent=False)
        self._frozen, self._use_queue = True, False

    def begin_step(self, step: int, max_steps: int) -> None:
        """Normalise the prototypes; freeze them, and use the queue, as the step says."""
        self.prototypes.normalize_()
        self._frozen = step < self.options.freeze_prototypes_steps
        self._use_queue = self.options.queue_size > 0 and step >= self.options.queue_start_step

    def forward(self, views: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """`views`: two large `[N, C, H, W]` then any small ones `[N, C, h, h]` -> (loss, logs)."""
        n = views[0].shape[0]
        z = F.normalize(self.projector(encode_views(self.encoder, views)), dim=1)  # [V * N, d]
        scores = list(self.prototypes(z, frozen=self._frozen).split(n))
        queued: Optional[List[Optional[torch.Tensor]]] = None
        if self._use_queue:
            full = int(self.queue_filled) >= self.queue.shape[1]  # SwAV waits for a full queue
            with torch.no_grad():
                queued = [self.prototypes(self.queue[i].to(z.dtype), frozen=True) if full else None
                          for i in range(len(ASSIGN))]
                self._push(z.detach().split(n))
        loss = self.criterion(scores, ASSIGN, queued)
        return loss, {"loss": loss.detach(), "prototypes_frozen": torch.tensor(float(self._frozen))}

    @torch.no_grad()
    def _push(self, embeddings: Sequence[torch.Tensor]) -> None:
        n = embeddings[0].shape[0]
        for i, view in enumerate(ASSIGN):
            self.queue[i] = torch.cat([embeddings[view].to(self.queue.dtype), self.queue[i, :-n]])[:self.queue.shape[1]]
        self.queue_filled.add_(n)

    def rank_state(self) -> Dict[str, torch.Tensor]:
        """This rank's feature queue (SwAV's queue is per rank)."""
        return {"queue": self.queue.cpu(), "queue_filled": self.queue_filled.cpu()} if self.options.queue_size else {}

    def load_rank_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore the queue `rank_state` returned (a queue of another size is started afresh)."""
        if "queue" in state and state["queue"].shape == self.queue.shape:
            self.queue.copy_(state["queue"])
            self.queue_filled.copy_(state["queue_filled"])
