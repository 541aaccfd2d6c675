"""The contrastive methods' losses as small modules, tensors in and out, each across every rank of the default
group (a world of one needs none): NT-Xent (SimCLR), InfoNCE against a queue (MoCo v2), InfoNCE over in-batch keys
(MoCo v3), BYOL's normalised MSE, and SwAV's swapped prediction with Sinkhorn-Knopp codes.

Shapes: `N` samples on this rank, `W` ranks, embedding width `D`, `K` prototypes or queued negatives.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medscale.trainer.collectives import all_reduce_sum, gather, gather_with_grad, world


class NTXentLoss(nn.Module):
    """SimCLR's normalised-temperature cross entropy: each of the 2N local views must pick its partner among all
    2WN views of every rank but itself. The mean over ranks of this rank's loss is the loss of one rank holding the
    whole batch, and gradients flow through the gather, so 2 ranks x N train like 1 rank x 2N."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """`z_a, z_b: [N, D]` (two views of the same N samples) -> the mean loss over this rank's 2N views."""
        rank, size = world()
        n = z_a.shape[0]
        local = F.normalize(torch.cat([z_a, z_b]), dim=1)  # [2N, D]
        everyone = torch.cat([gather_with_grad(local[:n]), gather_with_grad(local[n:])])  # [2WN, D]: A then B
        own = torch.arange(n, device=z_a.device) + rank * n  # where this rank's views sit among A (and B + WN)
        selves = torch.cat([own, own + size * n])
        partners = torch.cat([own + size * n, own])
        is_self = F.one_hot(selves, 2 * size * n).bool()
        logits = (local @ everyone.T / self.temperature).masked_fill(is_self, float("-inf"))
        return F.cross_entropy(logits, partners)


class QueueInfoNCELoss(nn.Module):
    """MoCo v2's InfoNCE: the positive is the query's own key, the negatives are the queue (keys of earlier
    batches, from every rank)."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """`q: [N, D]` queries, `k: [N, D]` keys (no gradient), `queue: [K, D]` unit rows -> mean loss."""
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1).detach()
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.detach().T], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class KeyInfoNCELoss(nn.Module):
    """MoCo v3's InfoNCE: the negatives are the other keys of the whole batch across ranks; scaled by 2 x the
    temperature as in MoCo v3."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """`q: [N, D]` queries, `k: [N, D]` keys of the momentum encoder (no gradient) -> mean loss."""
        rank, _ = world()
        q, k = F.normalize(q, dim=1), F.normalize(gather(k.detach()), dim=1)
        logits = q @ k.T / self.temperature
        labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
        return F.cross_entropy(logits, labels) * 2 * self.temperature


class NormalizedMSELoss(nn.Module):
    """BYOL's regression loss: `||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)`, averaged over samples."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """`p: [N, D]` predictions, `z: [N, D]` targets (no gradient) -> mean loss in [0, 4]."""
        return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's codes: `scores: [B, K]` (this rank's samples x prototypes) -> `Q: [B, K]`, rows summing to 1, with
    every prototype given an equal share of the whole batch (all ranks: the sums are all-reduced), approximately
    after `iterations` alternating normalisations of `exp(scores / eps)`. Computed in float32."""
    q = torch.exp(scores.float() / eps).T  # [K, B]
    k = q.shape[0]
    total_b = q.shape[1] * world()[1]
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: 1/K of the mass
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample: 1/B
        q /= total_b
    return (q * total_b).T


class SwavLoss(nn.Module):
    """Swapped prediction: the codes of each view in `assign` (Sinkhorn of its scores, optionally with queued
    embeddings' scores on top) are predicted from every other view's softmax(scores / temperature)."""

    def __init__(self, temperature: float = 0.1, sinkhorn_eps: float = 0.05, sinkhorn_iters: int = 3) -> None:
        super().__init__()
        self.temperature, self.eps, self.iterations = temperature, sinkhorn_eps, sinkhorn_iters

    def forward(self, scores: Sequence[torch.Tensor], assign: Sequence[int] = (0, 1),
                queued: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
        """`scores`: per view `[N, K]`; `queued[i]`: scores `[Q, K]` of queued embeddings for `assign[i]`, or None
        -> the mean over assigned views of the mean cross entropy of the other views against its codes."""
        losses: List[torch.Tensor] = []
        for i, view in enumerate(assign):
            extra = queued[i] if queued is not None else None
            with torch.no_grad():
                raw = scores[view].detach()
                codes = sinkhorn(raw if extra is None else torch.cat([extra.detach(), raw]), self.eps,
                                 self.iterations)[-raw.shape[0]:]
            others = [v for v in range(len(scores)) if v != view]
            loss = sum(-(codes * F.log_softmax(scores[v].float() / self.temperature, dim=1)).sum(dim=1).mean()
                       for v in others)
            losses.append(loss / len(others))
        return sum(losses) / len(losses)
