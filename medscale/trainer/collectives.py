"""The collectives the losses need, on any backend (gloo on CPU, NCCL on GPUs) and as identities in a world of one:
a gather that gradients flow back through, a gather without gradients, a sum over ranks.

`torch.distributed.nn.functional.all_gather` does the first but is deprecated, and its successor in
`torch.distributed._functional_collectives` aborts on gloo (seen with torch 2.14), hence the small autograd function.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world size) of the default group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather forward; backward sums every rank's gradient of the gathered tensor and keeps this rank's slice
    (the gradient of the sum of all ranks' losses, which the engine then averages like any gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`x: [N, ...]` of every rank, concatenated in rank order `[world * N, ...]`; gradients reach each rank's `x`.
    Every rank must pass the same N."""
    return _GatherWithGrad.apply(x) if world()[1] > 1 else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """`x: [N, ...]` of every rank concatenated in rank order, without gradients (momentum keys, queues)."""
    if world()[1] == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over ranks, in place (Sinkhorn's marginals)."""
    if world()[1] > 1:
        dist.all_reduce(x)
    return x
