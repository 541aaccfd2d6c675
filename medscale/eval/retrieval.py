"""Neighbour tasks on frozen features: retrieval (the retrieval seed's protocol: query = test split, database =
train split) and DINO's weighted kNN classification. The search is a blocked matrix product and a top-k."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from medscale.eval.metrics import (
    accuracy_at_k,
    auc,
    average_precision_at_k,
    bootstrap_interval,
    majority_vote_at_k,
    mean_interval,
)
from medscale.eval.options import KnnOptions, RetrievalOptions
from medscale.eval.task import EvalTask, Metric, TaskInput, TaskOutput

BLOCK = 4096  # queries per matrix product (bounds memory at BLOCK x database floats)


def nearest(queries: np.ndarray, database: np.ndarray, k: int, distance: str = "cosine") -> Tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """(indices `[Q, k]`, similarities `[Q, k]`) of each query's `k` nearest database rows, nearest first.
    `cosine`: rows L2-normalised, similarity = dot product; `l2`: similarity = -squared Euclidean distance."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    d = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32))
    if distance == "cosine":
        q = torch.nn.functional.normalize(q, dim=1)
        d = torch.nn.functional.normalize(d, dim=1)
    else:
        d_sq = (d * d).sum(dim=1)
    k = min(k, d.shape[0])
    indices, sims = [], []
    for start in range(0, q.shape[0], BLOCK):
        block = q[start:start + BLOCK]
        scores = block @ d.T
        if distance != "cosine":  # -|q - d|^2 = 2 q.d - |d|^2 - |q|^2 (the last term does not change the order)
            scores = scores.mul_(2).sub_(d_sq).sub_((block * block).sum(dim=1, keepdim=True))
        top = torch.topk(scores, k, dim=1)
        indices.append(top.indices)
        sims.append(top.values)
    return torch.cat(indices).numpy(), torch.cat(sims).numpy()


def retrieval_grid(dataset, query_rows: np.ndarray, neighbours: np.ndarray, n: int = 6) -> np.ndarray:
    """A picture: `n` test queries (first column) and their nearest train images, each labelled under it."""
    from PIL import Image, ImageDraw

    test, test_labels = dataset.images["test"], dataset.labels["test"]
    train, train_labels = dataset.images["train"], dataset.labels["train"]
    cell, pad, text = 84, 4, 14
    k = neighbours.shape[1]
    canvas = Image.new("RGB", (pad + (k + 1) * (cell + pad) + pad, pad + n * (cell + text + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, q in enumerate(query_rows[:n]):
        items = [(test[q], test_labels[q], "query")] + [(train[j], train_labels[j], "") for j in neighbours[q]]
        for col, (image, label, tag) in enumerate(items):
            tile = Image.fromarray(image).convert("RGB").resize((cell, cell), Image.NEAREST)
            x, y = pad + col * (cell + pad) + (pad if col else 0), pad + row * (cell + text + pad)
            canvas.paste(tile, (x, y))
            name = dataset.classes[int(label)] if int(label) < len(dataset.classes) else str(label)
            hit = col == 0 or int(label) == int(test_labels[q])
            draw.text((x + 2, y + cell + 1), f"{tag} {name}".strip(), fill=(0, 110, 0) if hit else (190, 0, 0))
    return np.asarray(canvas)


class RetrievalTask(EvalTask):
    """mAP@k, MMV@k, ACC@1/3/k of test queries against the train database (cosine by default)."""

    name, Options, cost_seconds = "retrieval", RetrievalOptions, 1.0

    def run(self, job: TaskInput) -> TaskOutput:
        """The seed's five figures with bootstrap intervals over queries, and a picture of a few queries."""
        k = self.options.k
        _, query_labels = job.dataset.split("test", self.name)
        _, db_labels = job.dataset.split("train", self.name)
        feats = job.features
        idx, _ = nearest(feats["test"], feats["train"], k, self.options.distance)
        found = db_labels[idx]
        per_query = {f"mAP@{k}": average_precision_at_k(found, query_labels),
                     f"MMV@{k}": majority_vote_at_k(found, query_labels, k)}
        for at in sorted({1, 3, k}):
            if at <= k:
                per_query[f"ACC@{at}"] = accuracy_at_k(found, query_labels, at)
        metrics = [Metric(name, *mean_interval(values, job.bootstrap, job.seed)) for name, values in per_query.items()]
        rows = np.random.default_rng(job.seed).permutation(len(query_labels))
        return TaskOutput(metrics, retrieval_grid(job.dataset, rows, idx))


class KnnTask(EvalTask):
    """DINO's weighted kNN: the k nearest train features vote with weight exp(cosine / T); accuracy and AUC."""

    name, Options, cost_seconds = "knn", KnnOptions, 1.0

    def run(self, job: TaskInput) -> TaskOutput:
        """Accuracy and AUC (class votes as scores) on the test split."""
        _, test_labels = job.dataset.split("test", self.name)
        _, train_labels = job.dataset.split("train", self.name)
        feats = job.features
        idx, sims = nearest(feats["test"], feats["train"], self.options.k, "cosine")
        votes = np.zeros((len(test_labels), job.n_classes))
        weights = np.exp(sims / self.options.temperature)
        np.add.at(votes, (np.repeat(np.arange(len(test_labels)), idx.shape[1]), train_labels[idx].ravel()),
                  weights.ravel())
        scores = votes / votes.sum(axis=1, keepdims=True)
        correct = (scores.argmax(axis=1) == test_labels).astype(np.float64)
        value = auc(scores, test_labels)
        low, high = bootstrap_interval({"scores": scores, "labels": test_labels}, auc, job.bootstrap, job.seed)
        return TaskOutput([Metric("accuracy", *mean_interval(correct, job.bootstrap, job.seed)),
                           Metric("auc", value, low, high)])
