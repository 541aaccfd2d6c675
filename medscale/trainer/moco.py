"""MoCo v2 (Chen et al. 2020: a momentum key encoder and a queue of negatives) and MoCo v3 (Chen et al. 2021: a
momentum encoder, a predictor and in-batch negatives across ranks; the ViT recipe)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from medscale.trainer.collectives import gather, world
from medscale.trainer.config import ModelSpec
from medscale.trainer.contrastive import FROZEN_NETWORKS, ContrastiveMethod, PredictorMethod, encode_views, head
from medscale.trainer.losses import KeyInfoNCELoss, QueueInfoNCELoss
from medscale.trainer.momentum import ema_update, frozen_copy
from medscale.trainer.options import MocoOptions, Mocov3Options


def has_per_rank_batchnorm(module: nn.Module) -> bool:
    """Whether `module` normalises with batch statistics of this rank alone (BatchNorm that is not synchronised)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in module.modules())


@torch.no_grad()
def shuffled_forward(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """MoCo's shuffling BN: `encode` this rank's share of the whole batch in a random order drawn alike on every
    rank, then hand each rank its own samples' outputs back, so that per-rank batch statistics cannot tell a key
    from its query. `x: [N, ...]` -> `[N, D]`, in `x`'s order."""
    rank, size = world()
    everyone = gather(x)
    order = torch.randperm(everyone.shape[0], generator=generator).to(x.device)
    keys = gather(encode(everyone[order.view(size, -1)[rank]]))  # keys[j] belongs to sample order[j]
    return keys[torch.argsort(order)].view(size, x.shape[0], -1)[rank]


class MocoMethod(ContrastiveMethod):
    """MoCo v2: queries `backbone -> projector`, keys from their momentum copies (momentum `moco.momentum`), the
    negatives a queue of `moco.queue_size` keys of earlier batches from every rank."""

    no_zero3 = FROZEN_NETWORKS
    Options = MocoOptions

    def __init__(self, options: MocoOptions, spec: ModelSpec, image_size: int) -> None:
        super().__init__(spec, image_size)
        self.options = options
        self.projector = head(self.width, options.projector)
        self.key_encoder, self.key_projector = frozen_copy(self.encoder), frozen_copy(self.projector)
        self.criterion = QueueInfoNCELoss(options.temperature)
        start = torch.randn(options.queue_size, options.projector.out_dim,
                            generator=torch.Generator().manual_seed(spec.seed))  # alike on every rank
        self.register_buffer("queue", F.normalize(start, dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: List[torch.Tensor] = []
        self._step, self._pass = 0, 0

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        encode = lambda images: self.key_projector(self.key_encoder(images))  # noqa: E731
        if self.options.shuffle_bn and world()[1] > 1 and has_per_rank_batchnorm(self.key_encoder):
            self._pass += 1
            shared = torch.Generator().manual_seed((self.seed * 1_000_003 + self._step) * 1009 + self._pass)
            return shuffled_forward(encode, x, shared)
        with torch.no_grad():
            return encode(x)

    def forward(self, views: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """`views`: two `[N, C, H, W]` -> (InfoNCE of view-1 queries against view-2 keys and the queue; both ways
        when `moco.symmetric`, logs). The keys join the queue after the optimizer step."""
        x_a, x_b = views[0], views[1]
        if self.options.symmetric:
            q_a, q_b = self.projector(encode_views(self.encoder, [x_a, x_b])).chunk(2)
            k_a, k_b = self._keys(x_a), self._keys(x_b)
            loss = (self.criterion(q_a, k_b, self.queue) + self.criterion(q_b, k_a, self.queue)) / 2
            self._pending.extend([k_b, k_a])
        else:
            k_b = self._keys(x_b)
            loss = self.criterion(self.projector(self.encoder(x_a)), k_b, self.queue)
            self._pending.append(k_b)
        return loss, {"loss": loss.detach()}

    def begin_step(self, step: int, max_steps: int) -> None:
        """Start counting this step's forward passes (their keys are enqueued at its end)."""
        self._step, self._pass = step, 0

    @torch.no_grad()
    def end_step(self, step: int, max_steps: int) -> None:
        """The key encoder follows the online one; this step's keys from every rank enter the queue."""
        ema_update(self.key_encoder, self.encoder, self.options.momentum)
        ema_update(self.key_projector, self.projector, self.options.momentum)
        for keys in self._pending:  # every rank's keys, in rank order: the queues stay identical
            self._enqueue(F.normalize(gather(keys), dim=1))
        self._pending.clear()

    def _enqueue(self, keys: torch.Tensor) -> None:
        size, ptr = self.queue.shape[0], int(self.queue_ptr)
        keys = keys[-size:].to(self.queue.dtype)
        slots = (torch.arange(keys.shape[0], device=keys.device) + ptr) % size
        self.queue[slots] = keys
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)


class Mocov3Method(PredictorMethod):
    """MoCo v3: queries `backbone -> projector -> predictor`, keys `backbone -> projector` of the momentum copy
    (momentum rising from `mocov3.momentum` to 1), InfoNCE over the keys of the whole batch, both ways."""

    Options = Mocov3Options

    def __init__(self, options: Mocov3Options, spec: ModelSpec, image_size: int) -> None:
        super().__init__(spec, image_size, options.projector, options.predictor, options.momentum,
                         KeyInfoNCELoss(options.temperature))
        patch_embed = getattr(self.encoder, "patch_embed", None)
        if options.freeze_patch_embed and patch_embed is not None:  # ViTs: a fixed random patch projection
            patch_embed.requires_grad_(False)
        self.make_targets()
