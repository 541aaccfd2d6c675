"""Run alone (one rank holding the whole batch) or under torchrun (each rank a slice of it): SimCLR's loss and
gradients on a ViT with a BatchNorm-free head, and SwAV's codes, on one fixed batch; rank 0 saves them to argv[1]
(tests/trainer/test_contrastive_dist.py compares the two)."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from medscale.trainer.collectives import all_reduce_sum, gather, world
from medscale.trainer.losses import sinkhorn
from medscale.trainer.options import HeadOptions, SimclrOptions
from medscale.trainer.registry import train_config
from medscale.trainer.simclr import SimclrMethod

BATCH = 8


def main(out: str) -> None:
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    rank, size = world()
    share = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
    cfg = train_config(method="simclr", model="vit_tiny_patch16_224", patch_size=4, in_chans=1,
                       simclr=SimclrOptions(temperature=0.2, projector=HeadOptions(64, 16, 2, batch_norm=False)))
    torch.manual_seed(0)  # the same initial weights on every rank, as DeepSpeed's broadcast makes them
    method = SimclrMethod(cfg.simclr, cfg.model_spec(), 16)
    data = torch.Generator().manual_seed(1)
    views = [torch.randn(BATCH, 1, 16, 16, generator=data) for _ in range(2)]
    loss, _ = method([v[share] for v in views])
    loss.backward()
    # what the engine does with them: the logged loss is the mean over ranks, gradients are averaged
    grads = all_reduce_sum(torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])) / size
    mean_loss = all_reduce_sum(loss.detach().clone()) / size
    prototypes = F.normalize(torch.randn(10, 16, generator=data), dim=1)
    scores = F.normalize(torch.randn(BATCH, 16, generator=data), dim=1) @ prototypes.T
    codes = gather(sinkhorn(scores[share], eps=0.05, iterations=3))
    if rank == 0:
        torch.save({"loss": mean_loss, "grads": grads, "codes": codes, "world_size": size}, out)


if __name__ == "__main__":
    main(sys.argv[1])
