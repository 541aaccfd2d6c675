"""Momentum (EMA) targets: the momentum schedule as a pure function of the step (a resumed run needs no state), the
target network as a frozen copy, and the update that follows each optimizer step."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def cosine_momentum(step: int, max_steps: int, base: float) -> float:
    """BYOL's and MoCo v3's schedule: `1 - (1 - base) * (cos(pi * step / max_steps) + 1) / 2`, from `base` at step 0
    to 1 at the end of the run."""
    progress = min(1.0, step / max(1, max_steps))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that no gradient and no optimizer touches (a momentum encoder or EMA target)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """`target <- momentum * target + (1 - momentum) * online` for every parameter (buffers such as BatchNorm
    statistics are the target's own, as in BYOL and MoCo); the two modules have the same structure."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.to(t.dtype), 1.0 - momentum)
