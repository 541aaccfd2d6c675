"""The GPU paths, in one short run on a machine with an NVIDIA GPU (what the 2-core CI machine cannot run):

1. the loaders into GPU memory over shards of real images: DALI's `mixed` decoding and augmentation on the GPU,
   and the torch loader's uint8 batches normalised on the GPU (`normalize_batch`), beside each other;
2. NCCL: the engine's process group (`init_distributed`) on the GPU and an all-reduce;
3. a bf16 MAE step, ViT-B/16 at 224 px with MedMAE's 512x8 decoder, through DeepSpeed ZeRO-2 (the engine's own
   set-up): images/s and MFU, model FLOPs (torch's counter) over the device's measured dense bf16 matmul rate.

A part whose package is missing there (DALI, DeepSpeed) says so and the rest runs.
Run: `python benchmarks/gpu.py [--images 4096] [--batch 64] [--steps 20]` (a few minutes on one H100).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loader import build_folder, throughput  # noqa: E402
from record import recorded  # noqa: E402
from train import step_flops  # noqa: E402

from medscale.data.augment import mae_transform, normalize_batch  # noqa: E402
from medscale.data.config import ShardConfig, SourceOptions  # noqa: E402
from medscale.data.dataset import ShardDataset, ShardLoader  # noqa: E402
from medscale.data.service import run_sharding  # noqa: E402


def bf16_matmul_rate(n: int = 8192, repeat: int = 10) -> float:
    """Dense bf16 matmul FLOP/s of this GPU (best of `repeat`)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def loaders(shards: Path, batch: int, workers: int) -> None:
    """Part 1: samples/s into GPU memory, DALI mixed against the torch loader's uint8 batches."""
    ds = ShardDataset(str(shards), batch_size=batch, rank=0, world_size=1,
                      transform=mae_transform(224, output="uint8"))

    class OnGpu:
        def __iter__(self):
            for b in ShardLoader(ds, num_workers=workers, pin_memory=True):
                b["image"] = normalize_batch(b["image"].cuda(non_blocking=True), channels=3)
                yield b

    rate, _ = throughput(OnGpu())
    print(f"| torch ShardLoader, uint8 batches normalised on the GPU ({workers} workers) | {rate:,.0f} |")
    try:
        from medscale.data.dali import DaliLoader
    except ImportError as exc:
        print(f"| DALI mixed | not run: {exc} |")
        return
    dali = DaliLoader(str(shards), batch_size=batch, augment="mae", image_size=224, num_threads=workers, rank=0,
                      world_size=1, device="gpu")
    first = next(iter(dali))["image"]
    if not (first.is_cuda and first.dtype == torch.float32 and tuple(first.shape[1:]) == (3, 224, 224)):
        raise SystemExit(f"DALI mixed gave {first.device} {first.dtype} {tuple(first.shape)}")
    rate, _ = throughput(dali)
    print(f"| DALI mixed (decoded and augmented on the GPU, {workers} CPU threads) | {rate:,.0f} |")


def nccl() -> None:
    """Part 2: the engine's process group on the GPU, and an all-reduce."""
    from medscale.trainer.distributed import init_distributed

    world = init_distributed()
    total = torch.ones(1, device="cuda")
    torch.distributed.all_reduce(total)
    print(f"\nprocess group: backend {world.backend}, world size {world.world_size}, device {world.device}; "
          f"all-reduce of ones: {float(total):.0f}")
    if world.backend != "nccl" or float(total) != world.world_size:
        raise SystemExit("the engine did not join an NCCL group on the GPU")


def mae_step(batch: int, steps: int) -> None:
    """Part 3: ViT-B MAE steps in bf16 through DeepSpeed ZeRO-2; images/s and MFU."""
    from medscale.trainer.config import TrainConfig
    from medscale.trainer.methods import MaeMethod
    from medscale.trainer.options import MaeOptions
    from medscale.trainer.registry import train_config
    from medscale.trainer.zero import initialize

    torch.manual_seed(0)
    cfg = train_config(model="vit_base_patch16_224", mae=MaeOptions(decoder_dim=512, decoder_depth=8,
                                                                   decoder_heads=16))
    method = MaeMethod(cfg.mae, cfg.model_spec(), 224).cuda()
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        flops = step_flops(method, images)
    engine = initialize(method, TrainConfig(zero_stage=2), batch, 1, "bf16", 1e-4)
    generator = torch.Generator(device="cuda").manual_seed(0)
    inputs = images.to(torch.bfloat16)
    times = []
    for step in range(steps + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = engine(inputs, generator)
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    rate = bf16_matmul_rate()
    print(f"\nMAE ViT-B/16 at 224, decoder 512x8, batch {batch}, bf16, DeepSpeed ZeRO-2 on "
          f"{torch.cuda.get_device_name()}: {step_s * 1e3:.0f} ms a step, {batch / step_s:,.0f} images/s, "
          f"{flops / batch / 1e9:.1f} GFLOP an image, MFU {100 * flops / step_s / rate:.0f}% of the measured dense "
          f"bf16 matmul rate ({rate / 1e12:.0f} TFLOP/s); loss {float(loss):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py measures the GPU paths: it needs an NVIDIA GPU (none is visible)")
    root = Path(tempfile.mkdtemp(prefix="medscale-gpu-"))
    try:
        folder = build_folder(root, args.images, 256)
        run_sharding(ShardConfig(inputs=[f"png={folder}"], output=str(root / "shards"), executor="local",
                                 progress=False, sources={"png": SourceOptions(labels_from_folders=True)}))
        print(f"{args.images} real images (256 px PNG shards), MAE transforms to 224 px, batch {args.batch}, "
              f"{torch.cuda.get_device_name()}\n\n| loader into GPU memory | samples/s |\n|---|---|")
        loaders(root / "shards", args.batch, args.workers)
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            print(f"\nNCCL and the bf16 MAE step: not run ({exc})")
            return
        nccl()
        mae_step(args.batch, args.steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    with recorded("gpu"):
        main()
