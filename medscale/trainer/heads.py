"""Projection and prediction heads of the contrastive methods, and SwAV's prototypes: small modules, tensors in and
out. Shapes: features `[N, D]` -> `[N, out_dim]`."""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


class MlpHead(nn.Module):
    """`layers` Linear layers: `in_dim -> hidden_dim -> ... -> out_dim`, each hidden one followed by BatchNorm1d (if
    `batch_norm`; then the Linear has no bias) and ReLU; the last one plain. One layer is a linear map."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, batch_norm: bool = True) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        parts: List[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == layers - 1
            parts.append(nn.Linear(a, b, bias=last or not batch_norm))
            if not last:
                parts.extend([nn.BatchNorm1d(b)] if batch_norm else [])
                parts.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: [N, in_dim]` -> `[N, out_dim]`."""
        return self.net(x)


class Prototypes(nn.Module):
    """SwAV's K prototypes: a bias-free linear map of unit-length embeddings onto unit-length prototype vectors, so
    that scores are cosine similarities in [-1, 1]."""

    def __init__(self, dim: int, count: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim, count, bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere (SwAV does it before each step)."""
        self.layer.weight.copy_(F.normalize(self.layer.weight, dim=1))

    def forward(self, z: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """`z: [N, dim]` (unit rows) -> scores `[N, count]`; `frozen`: no gradient reaches the prototypes."""
        weight = self.layer.weight.detach() if frozen else self.layer.weight
        return F.linear(z, weight)
