"""What the trained evaluation heads share (linear probe, fine-tuning, MLP, DANN): one training loop over shuffled
mini-batches, the weights of the best validation epoch, and their scores (accuracy with AUC, or with F1 at a
threshold), each with its 95% interval."""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from medscale.eval.metrics import auc, bootstrap_interval, f1_score, mean_interval
from medscale.eval.task import Metric, TaskInput


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, n: int, batch_size: int, epochs: int,
        generator: torch.Generator, batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
        lr_at: Optional[Callable[[int], float]] = None, before_epoch: Optional[Callable[[int], None]] = None,
        after_epoch: Optional[Callable[[int], bool]] = None, min_rows: int = 1) -> int:
    """Train `model` for `epochs` over `n` rows: each epoch in train mode (then `before_epoch(epoch)`), a fresh
    permutation from `generator` cut into batches of `batch_size` row indices; `batch_loss(rows, step)` is
    minimised one optimizer step per batch (at `lr_at(step)` when given; batches under `min_rows` rows are
    skipped). `after_epoch(epoch)` returning True stops early. Returns the number of steps taken."""
    step = 0
    for epoch in range(epochs):
        model.train()
        if before_epoch is not None:
            before_epoch(epoch)
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < min_rows:
                continue
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
            loss = batch_loss(rows, step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        if after_epoch is not None and after_epoch(epoch):
            break
    return step


class BestWeights:
    """The weights of the best validation score so far (copied, not referenced: later epochs must not change them),
    and early stopping once `patience` epochs in a row bring no better one."""

    def __init__(self, patience: Optional[int] = None) -> None:
        self.score, self.extra = -1.0, None
        self.state: Dict[str, torch.Tensor] = {}
        self.patience, self.waited = patience, 0

    def update(self, model: nn.Module, score: float, extra: object = None) -> bool:
        """Keep `model`'s weights (and `extra`, e.g. its threshold) if `score` beats the best; True: stop now."""
        if score > self.score:
            self.score, self.state, self.extra, self.waited = score, copy.deepcopy(model.state_dict()), extra, 0
            return False
        self.waited += 1
        return self.patience is not None and self.waited >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights back into `model`."""
        model.load_state_dict(self.state)


def classification_metrics(scores: np.ndarray, labels: np.ndarray, job: TaskInput) -> List[Metric]:
    """Accuracy (argmax of `scores: [N, C]`) and AUC (binary, or macro one-vs-rest) with bootstrap intervals."""
    correct = (scores.argmax(axis=1) == labels).astype(np.float64)
    low, high = bootstrap_interval({"scores": scores, "labels": labels}, auc, job.bootstrap, job.seed)
    return [Metric("accuracy", *mean_interval(correct, job.bootstrap, job.seed)),
            Metric("auc", auc(scores, labels), low, high)]


def threshold_metrics(prefix: str, probabilities: np.ndarray, labels: np.ndarray, threshold: float,
                      job: TaskInput) -> List[Metric]:
    """Accuracy and F1 of `probabilities >= threshold` (binary), with bootstrap intervals; names `prefix`ed."""
    predicted = (probabilities >= threshold).astype(np.int64)
    correct = (predicted == labels).astype(np.float64)
    low, high = bootstrap_interval({"predicted": predicted, "labels": labels}, f1_score, job.bootstrap, job.seed)
    return [Metric(f"{prefix}accuracy", *mean_interval(correct, job.bootstrap, job.seed)),
            Metric(f"{prefix}f1", f1_score(predicted, labels), low, high)]
