"""The MedSAM-pneumonia protocols on pooled embeddings (binary tasks): an MLP with early stopping on validation F1
and the decision threshold chosen on validation, and DANN (domain-adversarial training, source -> target) with a
trainable shared feature layer before the gradient reversal, beside the same network without adaptation."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from medscale.eval.heads import BestWeights, fit, threshold_metrics
from medscale.eval.metrics import f1_score
from medscale.eval.options import DannOptions, MlpOptions
from medscale.eval.task import EvalTask, Metric, TaskInput, TaskOutput

THRESHOLDS = np.linspace(0.05, 0.95, 19)


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear + ReLU between each pair of `dims`, a plain Linear at the end (logits)."""
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times -alpha backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """`x` unchanged (alpha kept for the backward pass)."""
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """The gradient times -alpha (none for alpha)."""
        return -ctx.alpha * grad, None


def dann_alpha(progress: float) -> float:
    """The reversal's weight at training progress `progress` in [0, 1]: 2 / (1 + exp(-10 p)) - 1."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DannNet(nn.Module):
    """shared = Linear + ReLU (trained by both heads); label head MLP -> 1 logit; domain head behind the reversal.
    `features: [N, D]` -> (label logits `[N]`, domain logits `[N]`)."""

    def __init__(self, dim: int, shared: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(dim, shared), nn.ReLU())
        self.label = mlp([shared, *hidden, 1])
        self.domain = mlp([shared, 128, 1])

    def forward(self, features: torch.Tensor, alpha: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both heads' logits; the domain head's gradient reaches `shared` reversed and scaled by `alpha`."""
        z = self.shared(features)
        return self.label(z).squeeze(1), self.domain(GradientReversal.apply(z, alpha)).squeeze(1)


def _binary(job: TaskInput, name: str, dataset=None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    dataset = dataset or job.dataset
    feats = job.get_features(dataset)
    out = {}
    for split in ("train", "val", "test"):
        _, labels = dataset.split(split, name)
        out[split] = (feats[split], labels)
    if any(set(np.unique(v[1])) - {0, 1} for v in out.values()):
        raise ValueError(f"{dataset.url}: {name} is a binary task (labels 0 and 1); this set has classes "
                         f"{dataset.classes}")
    return out


def _probabilities(net, x: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        out = net(torch.tensor(x))
    logits = out[0] if isinstance(out, tuple) else out.squeeze(1)
    return torch.sigmoid(logits).numpy()


def best_threshold(probabilities: np.ndarray, labels: np.ndarray) -> Tuple[float, float]:
    """(threshold, F1) maximising F1 over a fixed grid (ties: the lowest threshold)."""
    scores = [f1_score((probabilities >= t).astype(np.int64), labels) for t in THRESHOLDS]
    i = int(np.argmax(scores))
    return float(THRESHOLDS[i]), float(scores[i])


class MlpTask(EvalTask):
    """MLP D -> 128 -> 64 -> 1 (Adam, BCE), early stopping on validation F1 (patience), threshold from validation."""

    name, Options, cost_seconds = "mlp", MlpOptions, 5.0

    def run(self, job: TaskInput) -> TaskOutput:
        """Test accuracy and F1 at the validation threshold, of the best validation epoch's weights (copied)."""
        opts = self.options
        data = _binary(job, self.name)
        x, y = (torch.tensor(a) for a in data["train"])
        torch.manual_seed(job.seed)
        net = mlp([x.shape[1], *opts.hidden, 1])
        optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr, fused=True)
        best = BestWeights(opts.patience)

        def validate(_: int) -> bool:
            threshold, f1 = best_threshold(_probabilities(net, data["val"][0]), data["val"][1])
            return best.update(net, f1, threshold)

        fit(net, optimizer, len(x), opts.batch_size, opts.max_epochs, torch.Generator().manual_seed(job.seed),
            lambda rows, _: nn.functional.binary_cross_entropy_with_logits(net(x[rows]).squeeze(1), y[rows].float()),
            after_epoch=validate)
        best.restore(net)
        probabilities = _probabilities(net, data["test"][0])
        metrics = threshold_metrics("", probabilities, data["test"][1], best.extra, job)
        return TaskOutput(metrics + [Metric("val_f1", best.score), Metric("threshold", best.extra)])


class DannTask(EvalTask):
    """Source (this dataset, labelled) -> target (`eval.dann.target`, its train split used without labels);
    scores on both test splits, for DANN and for the same network trained without the domain head."""

    name, Options, cost_seconds = "dann", DannOptions, 10.0

    def run(self, job: TaskInput) -> TaskOutput:
        """Accuracy and F1 on source-test and target-test, adapted and plain (`plain_` rows)."""
        if job.target is None:
            raise ValueError("dann needs a target domain: set eval.dann.target (NAME=PATH, or a dataset of "
                             "eval.datasets)")
        source, target = _binary(job, self.name), _binary(job, self.name, job.target)
        metrics = []
        for prefix, adapt in (("", True), ("plain_", False)):
            net, threshold = self._train(source, target["train"][0], adapt, job)
            for domain, data in (("source", source), ("target", target)):
                probabilities = _probabilities(net, data["test"][0])
                metrics += threshold_metrics(f"{prefix}{domain}_", probabilities, data["test"][1], threshold, job)
        return TaskOutput(metrics)

    def _train(self, source, target_x: np.ndarray, adapt: bool, job: TaskInput):
        opts = self.options
        x, y = (torch.tensor(a) for a in source["train"])
        xt = torch.tensor(target_x)
        torch.manual_seed(job.seed)
        net = DannNet(x.shape[1], opts.shared, opts.hidden)
        optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr, fused=True)
        generator = torch.Generator().manual_seed(job.seed)
        total = opts.epochs * math.ceil(len(x) / opts.batch_size)

        def batch_loss(rows: torch.Tensor, step: int) -> torch.Tensor:
            alpha = dann_alpha(step / total) if adapt else 0.0
            label_logits, domain_logits = net(x[rows], alpha)
            loss = nn.functional.binary_cross_entropy_with_logits(label_logits, y[rows].float())
            if adapt:  # as many target rows, drawn from the same generator, labelled domain 1
                other = torch.randint(0, len(xt), (len(rows),), generator=generator)
                _, target_domain = net(xt[other], alpha)
                domains = torch.cat([domain_logits, target_domain])
                truth = torch.cat([torch.zeros(len(rows)), torch.ones(len(rows))])
                loss = loss + nn.functional.binary_cross_entropy_with_logits(domains, truth)
            return loss

        fit(net, optimizer, len(x), opts.batch_size, opts.epochs, generator, batch_loss)
        threshold, _ = best_threshold(_probabilities(net, source["val"][0]), source["val"][1])
        return net, threshold
