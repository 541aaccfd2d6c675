"""Classification heads trained on a backbone: MAE's linear probe on frozen features, and Less-is-More's
fine-tuning (backbone frozen for the first epochs, then trained; the best validation weights copied)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from medscale.eval.features import build_model, device, preprocess
from medscale.eval.heads import BestWeights, classification_metrics, fit
from medscale.eval.options import FinetuneOptions, LinearProbeOptions
from medscale.eval.task import EvalTask, Metric, TaskInput, TaskOutput
from medscale.trainer.schedule import learning_rate


class LinearProbeHead(nn.Module):
    """MAE's probe: BatchNorm1d without affine (eps 1e-6) then Linear (weights trunc-normal std 0.01, bias 0).
    `features: [N, D]` -> logits `[N, C]`."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the normalised features."""
        return self.linear(self.norm(features))


def lars(head: nn.Module, lr: float):
    """timm's LARS as MAE's probe uses it: momentum 0.9, no weight decay, the trust ratio on weight matrices only."""
    from timm.optim import create_optimizer_v2

    matrices = [p for p in head.parameters() if p.ndim > 1]
    vectors = [p for p in head.parameters() if p.ndim <= 1]
    groups = [{"params": matrices, "always_adapt": True}, {"params": vectors, "always_adapt": False}]
    return create_optimizer_v2([g for g in groups if g["params"]], opt="lars", lr=lr, weight_decay=0.0,
                               momentum=0.9)


class LinearProbeTask(EvalTask):
    """Frozen features -> BatchNorm + Linear, LARS with per-step warmup then cosine; test accuracy and AUC."""

    name, Options, cost_seconds = "linear_probe", LinearProbeOptions, 3.0

    def run(self, job: TaskInput) -> TaskOutput:
        """Train the head on the train split's features for the fixed budget; score the test split."""
        opts = self.options
        _, train_labels = job.dataset.split("train", self.name)
        _, test_labels = job.dataset.split("test", self.name)
        feats = job.features
        x, y = torch.tensor(feats["train"]), torch.tensor(train_labels)
        torch.manual_seed(job.seed)
        head = LinearProbeHead(x.shape[1], job.n_classes)
        batch = min(opts.batch_size, len(x))
        base_lr = opts.blr * batch / 256
        optimizer = lars(head, base_lr)
        steps_per_epoch = math.ceil(len(x) / batch)
        total, warmup = opts.epochs * steps_per_epoch, opts.warmup_epochs * steps_per_epoch
        fit(head, optimizer, len(x), batch, opts.epochs, torch.Generator().manual_seed(job.seed),
            lambda rows, _: nn.functional.cross_entropy(head(x[rows]), y[rows]),
            lr_at=lambda step: learning_rate(step, base_lr, warmup, total),
            min_rows=2)  # BatchNorm needs two samples
        head.eval()
        with torch.no_grad():
            scores = torch.softmax(head(torch.tensor(feats["test"])), dim=1).numpy()
        return TaskOutput(classification_metrics(scores, test_labels, job))


class FinetuneTask(EvalTask):
    """The backbone and a linear head trained together (Adam), the backbone frozen for the first epochs; the
    weights of the best validation accuracy are copied (not referenced) and scored on the test split."""

    name, Options, cost_seconds = "finetune", FinetuneOptions, 60.0
    needs_features = False  # it trains the backbone itself

    def run(self, job: TaskInput) -> TaskOutput:
        """Fine-tune for the budget; test accuracy and AUC of the best validation epoch."""
        if job.source.kind == "raw":
            raise ValueError("finetune needs a backbone: raw pixels have none to train (use linear_probe)")
        opts = self.options
        backbone, card = build_model(job.source, job.seed)
        splits = {s: job.dataset.split(s, self.name) for s in ("train", "val", "test")}
        tensors = {s: (preprocess(im, card), torch.tensor(lb)) for s, (im, lb) in splits.items()}
        torch.manual_seed(job.seed)
        where = device()
        model = nn.Sequential(backbone, nn.Linear(backbone.num_features, job.n_classes)).to(where)
        optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
        best = BestWeights()
        x, y = tensors["train"]

        def freeze(epoch: int) -> None:  # the backbone (weights and BatchNorm statistics) frozen at first
            frozen = epoch < opts.frozen_epochs
            for p in backbone.parameters():
                p.requires_grad_(not frozen)
            backbone.train(not frozen)

        def validate(_: int) -> bool:
            val = self._scores(model, tensors["val"][0], job)
            return best.update(model, float((val.argmax(1) == splits["val"][1]).mean()))

        fit(model, optimizer, len(x), opts.batch_size, opts.epochs, torch.Generator().manual_seed(job.seed),
            lambda rows, _: nn.functional.cross_entropy(model(x[rows].to(where)), y[rows].to(where)),
            before_epoch=freeze, after_epoch=validate)
        best.restore(model)
        scores = self._scores(model, tensors["test"][0], job)
        return TaskOutput(classification_metrics(scores, splits["test"][1], job) + [Metric("val_accuracy", best.score)])

    @staticmethod
    @torch.no_grad()
    def _scores(model: nn.Module, x: torch.Tensor, job: TaskInput) -> np.ndarray:
        model.eval()
        where = next(model.parameters()).device
        return torch.cat([torch.softmax(model(x[i:i + job.batch_size].to(where)), dim=1).cpu()
                          for i in range(0, len(x), job.batch_size)]).numpy()
