"""Training speed: medscale's steps through DeepSpeed against the same steps in plain torch, in one run.

MAE: for each decoder (the CPU preset's 128x4 and the MedMAE 512x8x16) it measures the model FLOPs of one
forward + backward (torch's FLOP counter), the step time of plain torch (module + torch.optim.AdamW) and of the
DeepSpeed engine (ZeRO stage 2, fp32, one process), and this machine's dense float32 matmul rate, then prints MFU
(model FLOPs / step time / matmul rate), DeepSpeed's overhead, and the images/s of the tiny CPU recipe.
Contrastive methods: each one's step (with its momentum update, queue, Sinkhorn) on ResNet-50, plain torch against
the DeepSpeed engine, images/s and the engine's overhead; then the extra cost of SwAV's 6 small multi-crop views.
Run: `python benchmarks/train.py` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from record import recorded  # noqa: E402

os.environ.setdefault("DS_ACCELERATOR", "cpu")
from medscale.trainer.config import TrainConfig  # noqa: E402
from medscale.trainer.methods import MaeMethod  # noqa: E402
from medscale.trainer.options import MaeOptions  # noqa: E402
from medscale.trainer.registry import train_config  # noqa: E402
from medscale.trainer.zero import initialize  # noqa: E402


def matmul_rate(n: int = 2048, repeat: int = 10) -> float:
    """Dense float32 matmul FLOP/s of this machine (best of `repeat`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def step_flops(method, images: torch.Tensor) -> float:
    """Model FLOPs of one forward + backward (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = method(images, torch.Generator(device=images.device).manual_seed(0))
        loss.backward()
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_steps(step, warmup: int, steps: int) -> float:
    """Median seconds per step of `step()`."""
    return time_alternating([step], warmup, steps)[0]


def time_alternating(steps_fns, warmup: int, steps: int) -> list:
    """Median seconds per step of each function, run in turn (A, B, A, B...) so that the machine's drift from
    one moment to the next falls on all of them alike."""
    for _ in range(warmup):
        for fn in steps_fns:
            fn()
    times = [[] for _ in steps_fns]
    for _ in range(steps):
        for fn, out in zip(steps_fns, times):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return [sorted(t)[len(t) // 2] for t in times]


def method_for(decoder, image_size: int, patch: int) -> MaeMethod:
    dim, depth, heads = decoder
    torch.manual_seed(0)
    cfg = train_config(model="vit_tiny_patch16_224", patch_size=patch,
                       mae=MaeOptions(decoder_dim=dim, decoder_depth=depth, decoder_heads=heads))
    return MaeMethod(cfg.mae, cfg.model_spec(), image_size)


def plain_step(method, inputs):
    """One training step of `method` in plain torch: forward, backward, torch's AdamW, the method's hooks."""
    optimizer = torch.optim.AdamW(method.parameter_groups(0.05), lr=1e-4, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)
    count = iter(range(1 << 30))

    def step():
        n = next(count)
        method.begin_step(n, 1000)
        loss, _ = method(inputs, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.end_step(n, 1000)
    return step


def deepspeed_step(method, inputs, batch: int):
    """The same step through the engine's DeepSpeed set-up (ZeRO-2, fp32, its fused AdamW, one process)."""
    from medscale.trainer.distributed import init_distributed

    init_distributed()
    engine = initialize(method, TrainConfig(zero_stage=2), batch, 1, "fp32", 1e-4)  # the engine's own set-up
    generator = torch.Generator().manual_seed(0)
    count = iter(range(1 << 30))

    def step():
        n = next(count)
        method.begin_step(n, 1000)
        loss, _ = engine(inputs, generator)
        engine.backward(loss)
        engine.step()
        method.end_step(n, 1000)
    return step


def tensor_bytes(root, exclude: set) -> int:
    """Bytes of every distinct tensor storage reachable from `root` (attributes, lists, dicts), less `exclude`."""
    seen, total, todo, visited = set(exclude), 0, [root], set()
    while todo:
        obj = todo.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if torch.is_tensor(obj):
            if obj.device.type != "meta" and obj.untyped_storage().data_ptr() not in seen:
                seen.add(obj.untyped_storage().data_ptr())
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("deepspeed", "torch.optim")):
            todo.extend(v for k, v in vars(obj).items() if k not in ("module", "_modules", "parameters"))
    return total


def zero_memory(stages=(0, 1, 2, 3)) -> None:
    """Under torchrun with 2 ranks: per-rank bytes of optimizer state, master weights and gradients after one step
    of each ZeRO stage (rank 0 prints a line per stage)."""
    import torch.distributed as dist

    from medscale.trainer.distributed import init_distributed

    world = init_distributed()
    images = torch.randn(4, 3, 64, 64)
    for stage in stages:
        method = method_for((128, 4, 4), 64, 16)
        engine = initialize(method, TrainConfig(zero_stage=stage), 4, world.world_size, "fp32", 1e-4)
        for step in range(2):  # measured after the second backward: optimizer state exists, gradients are held
            loss, _ = engine(images, torch.Generator().manual_seed(0))
            engine.backward(loss)
            if step == 0:
                engine.step()
        # model weights are not counted: the full ones this rank holds, and under ZeRO-3 its partition
        weights = [w for p in method.parameters() for w in (p.data, getattr(p, "ds_tensor", None)) if w is not None]
        params = {w.untyped_storage().data_ptr() for w in weights if w.numel()}
        grads = {p.grad.untyped_storage().data_ptr(): p.grad.untyped_storage().nbytes() for p in method.parameters()
                 if p.grad is not None}
        state = tensor_bytes(engine.optimizer, params | set(grads)) + sum(grads.values())
        engine.step()
        model = sum(p.numel() * p.element_size() for p in method.parameters())
        if world.rank == 0:
            print(f"ZERO {stage} {state} {model}", flush=True)
        del engine
        dist.barrier()


def zero_table() -> None:
    """Run `zero_memory` on 2 gloo ranks and print the table."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, "--zero-memory"], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    rows = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("ZERO ")]
    if not rows:
        print("ZeRO memory: the 2-rank run failed:", done.stderr[-1500:])
        return
    base = int(rows[0][1])
    print("\n| ZeRO stage (2 ranks, fp32) | per-rank optimizer state + master weights + gradients | vs stage 0 |")
    print("|---|---|---|")
    for stage, state, _ in rows:
        print(f"| {stage} | {int(state) / 2**20:.1f} MiB | {int(state) / base:.0%} |")


def contrastive_for(name: str, model: str, size: int, small_crops: int = 0):
    """A contrastive method as its GPU preset builds it (heads, prototypes, queue), on `model` at `size` px."""
    from medscale.trainer.registry import create_method

    torch.manual_seed(0)
    cfg = train_config(method=name, model=model, in_chans=3)
    cfg.moco.queue_size = 4096
    cfg.swav.small_crops, cfg.swav.prototypes, cfg.swav.freeze_prototypes_steps = small_crops, 500, 0
    return create_method(name, cfg, size)


def contrastive_table(model: str, size: int, batch: int, steps: int) -> None:
    """Plain torch vs DeepSpeed per contrastive method, then SwAV with and without its small views."""
    from medscale.trainer.registry import METHODS

    views = [torch.randn(batch, 3, size, size) for _ in range(2)]
    print(f"\n| {model}, {size} px, batch {batch} x 2 views | plain torch s/step | images/s | DeepSpeed ZeRO-2 s/step "
          "| images/s | engine overhead |")
    print("|---|---|---|---|---|---|")
    for name in (n for n in METHODS if n != "mae"):
        torch_s, ds_s = time_alternating([plain_step(contrastive_for(name, model, size), views),
                                          deepspeed_step(contrastive_for(name, model, size), views, batch)], 2, steps)
        print(f"| {name} | {torch_s:.2f} | {batch / torch_s:.1f} | {ds_s:.2f} | {batch / ds_s:.1f} | "
              f"{100 * (ds_s / torch_s - 1):+.0f}% |")
    small = max(16, round(size * 96 / 224 / 16) * 16)  # SwAV's 96 px at 224, at this size
    crops = views + [torch.randn(batch, 3, small, small) for _ in range(6)]
    two, eight = time_alternating([plain_step(contrastive_for("swav", model, size), views),
                                   plain_step(contrastive_for("swav", model, size, 6), crops)], 2, steps)
    print(f"\nSwAV multi-crop (plain torch): 2 x {size} px {two:.2f} s/step, 2 x {size} + 6 x {small} px "
          f"{eight:.2f} s/step: the small views cost {100 * (eight / two - 1):+.0f}% per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--contrastive-model", default="resnet50")
    parser.add_argument("--contrastive-size", type=int, default=128)
    parser.add_argument("--contrastive-batch", type=int, default=16)
    parser.add_argument("--part", choices=("all", "mae", "contrastive"), default="all")
    parser.add_argument("--zero-memory", action="store_true", help="(internal) the per-rank memory run of one rank")
    args = parser.parse_args()
    if args.zero_memory:
        return zero_memory()
    torch.set_num_threads(args.threads)
    if args.part == "contrastive":
        return contrastive_table(args.contrastive_model, args.contrastive_size, args.contrastive_batch, args.steps)
    rate = matmul_rate()
    print(f"dense float32 matmul: {rate / 1e9:.0f} GFLOP/s ({args.threads} threads)\n")
    print("| MAE ViT-Tiny, decoder | GFLOP/image (fwd+bwd) | plain torch s/step | MFU | DeepSpeed ZeRO-2 s/step | "
          "MFU | DeepSpeed / torch MFU | engine overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for decoder in [(128, 4, 4), (512, 8, 16)]:
        images = torch.randn(args.batch, 3, args.image_size, args.image_size)
        method = method_for(decoder, args.image_size, 16)
        flops = step_flops(method, images)
        torch_s, ds_s = time_alternating(
            [plain_step(method, images), deepspeed_step(method_for(decoder, args.image_size, 16), images, args.batch)],
            2, args.steps)
        mfu_torch, mfu_ds = flops / torch_s / rate, flops / ds_s / rate
        print(f"| {decoder[0]}x{decoder[1]} | {flops / args.batch / 1e9:.1f} | {torch_s:.2f} | "
              f"{100 * mfu_torch:.0f}% | "
              f"{ds_s:.2f} | {100 * mfu_ds:.0f}% | {mfu_ds / mfu_torch:.2f} | {100 * (ds_s / torch_s - 1):+.0f}% |")
    # the tiny CPU recipe (configs/mae-tiny.yaml): 32 px, 4-px patches, batch 32, decoder 128x4
    images = torch.randn(32, 3, 32, 32)
    tiny_s = time_steps(deepspeed_step(method_for((128, 4, 4), 32, 4), images, 32), 3, 10)
    print(f"\ntiny CPU recipe (configs/mae-tiny.yaml, 32 px, batch 32, DeepSpeed step only): "
          f"{32 / tiny_s:.0f} images/s")
    zero_table()
    if args.part == "all":
        contrastive_table(args.contrastive_model, args.contrastive_size, args.contrastive_batch, args.steps)


if __name__ == "__main__":
    with recorded("train"):
        main()
