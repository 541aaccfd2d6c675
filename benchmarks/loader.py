"""Loader throughput on the same 10,000+ real images, in one run: medscale's torch loader over shards, the DALI
CPU pipeline over shards, and torchvision `ImageFolder` over the same images as PNG files (the baseline), all with
the MAE transforms (RandomResizedCrop 224 bicubic, flip, normalise) and the same number of workers.
Also the MAE per-sample CPU cost (decode + transforms, one process), to plan GPU budgets on paper.

Run: `python benchmarks/loader.py [--images 10240] [--workers 2] [--size 224]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from record import recorded  # noqa: E402

from medscale.data.augment import IMAGENET_MEAN, IMAGENET_STD, mae_transform, normalize_batch  # noqa: E402
from medscale.data.config import ShardConfig, SourceOptions  # noqa: E402
from medscale.data.dataset import ShardDataset, ShardLoader  # noqa: E402
from medscale.data.png import decode_png  # noqa: E402
from medscale.data.service import run_sharding  # noqa: E402
from medscale.demo import DEMO_DATA  # noqa: E402

BATCH = 64


def build_folder(root: Path, n: int, side: int) -> Path:
    """`n` real MedMNIST images (pneumonia + breast, all splits) resized to `side` px, as an ImageFolder tree."""
    images, labels = [], []
    for name in ("pneumoniamnist_28.npz", "breastmnist_28.npz"):
        data = np.load(DEMO_DATA / "medmnist" / name)
        for split in ("train", "val", "test"):
            images.extend(data[f"{split}_images"])
            labels.extend(data[f"{split}_labels"].reshape(-1).tolist())
    folder = root / "png"
    for c in (0, 1):
        (folder / f"class{c}").mkdir(parents=True)
    for i in range(n):  # past the 6,636 originals, mirrored copies (real pixels, not identical files)
        img = images[i % len(images)] if i < len(images) else images[i % len(images)][:, ::-1]
        Image.fromarray(np.ascontiguousarray(img)).resize((side, side), Image.BICUBIC).save(
            folder / f"class{labels[i % len(labels)]}" / f"{i:05d}.png", compress_level=1)
    return folder


def throughput(loader, limit_s: float = 120.0, normalize: bool = False) -> tuple:
    """(samples/s, samples) over one pass (first batch excluded: worker start-up); `normalize`: the trainer's side
    of the uint8 path (float conversion + normalisation in this process) is timed too."""
    it = iter(loader)
    next(it)
    n, start = 0, time.perf_counter()
    for batch in it:
        if normalize:
            normalize_batch(batch["image"])
        n += len(batch["image"] if isinstance(batch, dict) else batch[0])
        if time.perf_counter() - start > limit_s:
            break
    return n / (time.perf_counter() - start), n


def per_sample_bounds(shards: Path, size: int, workers: int, count: int = 500) -> dict:
    """{batch dtype: (us a sample, `workers` x the samples/s of one core)} for decode + MAE transforms alone."""
    from medscale.data.index import load_index

    index = load_index(str(shards))
    tar = (shards / index.shards[0]).read_bytes()
    blobs = [tar[o:o + s] for o, s in zip(index.offsets[:count], index.lengths[:count])]
    out = {}
    for dtype in ("float32", "uint8"):
        transform = mae_transform(size, output=dtype)
        start = time.perf_counter()
        for blob in blobs:
            transform(decode_png(blob))
        us = (time.perf_counter() - start) / len(blobs) * 1e6
        out[dtype] = (us, workers * 1e6 / us)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10240)
    parser.add_argument("--side", type=int, default=256, help="stored image size")
    parser.add_argument("--size", type=int, default=224, help="crop size")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="medscale-loader-bench-"))
    try:
        folder = build_folder(root, args.images, args.side)
        run_sharding(ShardConfig(inputs=[f"png={folder}"], output=str(root / "shards"), executor="local",
                                 progress=False, sources={"png": SourceOptions(labels_from_folders=True)}))
        # the bound, measured before, between and after the loaders (medians): a shared machine's speed drifts
        bounds_seen = [per_sample_bounds(root / "shards", args.size, args.workers)]
        rows = []

        baseline_tf = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                                  v2.RandomResizedCrop(args.size, scale=(0.2, 1.0),
                                                       interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                                  v2.RandomHorizontalFlip(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        folder_ds = datasets.ImageFolder(str(folder), transform=baseline_tf)
        base, n = throughput(torch.utils.data.DataLoader(folder_ds, batch_size=BATCH, shuffle=True,
                                                         num_workers=args.workers))
        rows.append(("torchvision ImageFolder over PNG files (baseline)", base, ""))

        ds = ShardDataset(str(root / "shards"), batch_size=BATCH, transform=mae_transform(args.size), rank=0,
                          world_size=1)
        ours, n = throughput(ShardLoader(ds, num_workers=args.workers))
        rows.append(("medscale ShardLoader over shards, float batches", ours, "float32"))
        ds8 = ShardDataset(str(root / "shards"), batch_size=BATCH, rank=0, world_size=1,
                           transform=mae_transform(args.size, output="uint8"))
        ours8, n = throughput(ShardLoader(ds8, num_workers=args.workers))
        rows.append(("medscale ShardLoader, uint8 batches as delivered (a GPU trainer normalises them)", ours8,
                     "uint8"))
        bounds_seen.append(per_sample_bounds(root / "shards", args.size, args.workers))
        ours8, n = throughput(ShardLoader(ds8, num_workers=args.workers), normalize=True)
        rows.append(("medscale ShardLoader, uint8 batches normalised in the training process on CPU", ours8, ""))

        try:
            from medscale.data.dali import DaliLoader

            dali = DaliLoader(str(root / "shards"), batch_size=BATCH, augment="mae", image_size=args.size,
                              num_threads=args.workers, rank=0, world_size=1, device="cpu")
            rate, n = throughput(dali)
            rows.append(("DALI CPU pipeline over shards", rate, ""))
        except ImportError:
            pass

        bounds_seen.append(per_sample_bounds(root / "shards", args.size, args.workers))
        bounds = {kind: tuple(np.median([seen[kind] for seen in bounds_seen], axis=0)) for kind in bounds_seen[0]}
        print(f"{args.images} real images ({args.side} px PNG), MAE transforms to {args.size} px, batch {BATCH}, "
              f"{args.workers} workers\n")
        print("| loader | samples/s | vs ImageFolder | of its bound |")
        print("|---|---|---|---|")
        for name, rate, kind in rows:
            bound = f"{rate / bounds[kind][1]:.0%}" if kind in bounds else ""
            print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {bound} |")
        print(f"\nThe bound: {args.workers} workers x the per-sample cost of decode + transforms in one process, "
              "nothing else (no reading, seeding, batching or hand-over; the median of 3 measurements):")
        for kind, (us, rate) in bounds.items():
            print(f"- {kind} batches: {us:,.0f} us a sample -> {rate:,.0f} samples/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    with recorded("loader"):
        main()
