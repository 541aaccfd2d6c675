"""Evaluation speed, in one run on this machine:

1. 8 (task x dataset) jobs (retrieval, kNN, linear probe, MLP on BreastMNIST and PneumoniaMNIST) of one
   backbone through the pool (a local Ray, one CPU per task) against the same jobs one after another in this
   process with all cores' torch threads, both on the same warm feature cache; Ray's start is timed apart.
2. Retrieval of 10,000 queries against 100,000 database vectors of 768 dimensions (cosine, top 5) against the
   bare matrix product of the same sizes in the same blocks.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from record import recorded  # noqa: E402

from medscale.core.executor import create_executor, fan_out  # noqa: E402
from medscale.eval.datasets import load_dataset  # noqa: E402
from medscale.eval.features import features, parse_checkpoints  # noqa: E402
from medscale.eval.pool import PRELOAD, Job, longest_first, run_job  # noqa: E402
from medscale.eval.registry import eval_config  # noqa: E402
from medscale.eval.retrieval import BLOCK, nearest  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "medscale" / "demo_data" / "medmnist"
TASKS = ("retrieval", "knn", "linear_probe", "mlp")


def tiny_export(folder: Path) -> Path:
    """A ViT-Tiny (4-px patches, 28 px) in the card contract: the size of the demo's backbone."""
    import timm

    from medscale.core.card import Card, save_backbone

    kwargs = {"img_size": 28, "patch_size": 4, "num_classes": 0}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    return save_backbone(model, folder, Card("vit_tiny_patch16_224", 28, [0.5] * 3, [0.25] * 3, kwargs=kwargs, step=0))


def pool_against_sequential() -> None:
    """Part 1."""
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    cfg = eval_config(bootstrap=1000, progress=False)
    cfg.linear_probe.epochs = 90
    source = parse_checkpoints([str(tiny_export(work / "tiny"))])[0]
    datasets = {name: load_dataset(f"{name}={DATA / f'{name}mnist_28.npz'}") for name in ("breast", "pneumonia")}
    cache = work / "features"
    start = time.perf_counter()
    for dataset in datasets.values():
        features(source, dataset, cache, cfg.batch_size)
    extract_s = time.perf_counter() - start
    jobs = longest_first([Job(source, task, name) for task in TASKS for name in datasets], datasets)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    start = time.perf_counter()
    executor = create_executor("ray", num_cpus=os.cpu_count(), preload=PRELOAD)  # workers started, modules imported
    ray_start_s = time.perf_counter() - start
    sequential, pool, outcomes = [], [], []
    for _ in range(2):  # alternate, keep the faster of each (the first pass also warms this process)
        start = time.perf_counter()
        for job in jobs:
            run_job(job, datasets, cfg, str(cache), threads)
        sequential.append(time.perf_counter() - start)
        start = time.perf_counter()
        outcomes = list(fan_out(executor, run_job, jobs, datasets, cfg, str(cache), 1, progress=False))
        pool.append(time.perf_counter() - start)
    executor.close()
    sequential_s, pool_s = min(sequential), min(pool)
    failed = [str(e) for _, _, e in outcomes if e is not None]
    print(f"features of {len(datasets)} datasets extracted once: {extract_s:.1f} s; Ray start (timed apart): "
          f"{ray_start_s:.1f} s" + (f"; FAILED: {failed}" if failed else ""))
    print("\n| 8 jobs (4 tasks x 2 datasets), warm feature cache | seconds | vs one process |")
    print("|---|---|---|")
    print(f"| one process, one job after another, {threads} torch threads | {sequential_s:.1f} | 1.00x |")
    print(f"| the pool: local Ray, {os.cpu_count()} workers x 1 thread | {pool_s:.1f} | "
          f"{sequential_s / pool_s:.2f}x |")


def retrieval_against_matmul(queries: int = 10_000, database: int = 100_000, dim: int = 768) -> None:
    """Part 2."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    d = rng.standard_normal((database, dim), dtype=np.float32)
    torch.set_num_threads(os.cpu_count() or 1)
    qt, dt = torch.from_numpy(q), torch.from_numpy(d)
    times = {"matmul": [], "retrieval": []}
    for _ in range(2):  # alternate, keep the faster of each
        start = time.perf_counter()
        for i in range(0, queries, BLOCK):
            qt[i:i + BLOCK] @ dt.T
        times["matmul"].append(time.perf_counter() - start)
        start = time.perf_counter()
        nearest(q, d, 5, "cosine")
        times["retrieval"].append(time.perf_counter() - start)
    bare, ours = min(times["matmul"]), min(times["retrieval"])
    print(f"\n| retrieval, {queries:,} queries x {database:,} database x {dim} dims | seconds | vs bare product |")
    print("|---|---|---|")
    print(f"| bare matrix product (same {BLOCK}-query blocks) | {bare:.2f} | 1.00x |")
    print(f"| medscale retrieval (normalise, product, top 5) | {ours:.2f} | {ours / bare:.2f}x |")


if __name__ == "__main__":
    with recorded("eval"):
        pool_against_sequential()
        retrieval_against_matmul()
