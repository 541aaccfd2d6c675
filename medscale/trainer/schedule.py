"""The learning-rate rule and schedule of MAE (pure functions of the step, so a resumed run needs no state)."""

from __future__ import annotations

import math


def scaled_lr(blr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: lr = blr x effective batch / 256, where the effective batch is the per-rank
    batch x gradient accumulation x world size."""
    return blr * effective_batch / 256


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The lr of optimizer step `step` (0-based): linear warmup from 0 over `warmup_steps`, then a half-cycle cosine
    from `base_lr` down to `min_lr` at `total_steps` (MAE's per-iteration schedule)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
