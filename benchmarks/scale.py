"""Cost growth: shard, one loader epoch, dedup (hash-volume and minhash-global, dry runs) and retrieval at about
1x, 3x and 10x the demo's MedMNIST corpus (its real images repeated under distinct file names, so distinct keys),
each stage in a fresh process: seconds and peak memory (the process and its children) per size, and the fitted
exponent of time in size (1.0: linear). Goal: <= 1.1 for all but retrieval (queries x database grows as the
square), peak memory flat for shard and loader.

    python benchmarks/scale.py                 # sizes 1, 3, 10
    python benchmarks/scale.py --sizes 1 2     # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from record import recorded  # noqa: E402

from medscale.demo import DEMO_DATA  # noqa: E402

STAGES = ("shard", "loader epoch", "dedup hash-volume", "dedup minhash-global", "retrieval")


def inputs_at(root: Path, times: int) -> List[str]:
    """`times` copies of each bundled MedMNIST file under distinct names (hard links: no bytes copied)."""
    folder = root / f"inputs-{times}"
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted((DEMO_DATA / "medmnist").glob("*.npz")):
        for i in range(times):
            link = folder / f"{source.stem}-{i:03d}.npz"
            if not link.exists():
                os.link(source, link)
    return [str(folder)]


def warm() -> None:
    """Import what the stages use, so that the timed part is the work (a process pays imports once)."""
    import torch  # noqa: F401

    import medscale.data.loaders  # noqa: F401
    import medscale.data.service  # noqa: F401
    import medscale.dedup.service  # noqa: F401
    import medscale.eval.retrieval  # noqa: F401


def run_stage(stage: str, root: Path, times: int) -> None:
    """One stage at one size, in this process (the parent measures it)."""
    corpus = root / f"corpus-{times}"
    if stage == "shard":
        from medscale.data.config import ShardConfig
        from medscale.data.service import run_sharding

        run_sharding(ShardConfig(inputs=inputs_at(root, times), output=str(corpus), executor="pool", progress=False))
    elif stage.startswith("dedup"):
        from medscale.dedup.config import DedupConfig
        from medscale.dedup.service import run_dedup

        # a dry run: the search and the report, the manifest left as it is (the corpus's copies are exact
        # duplicates: written decisions would shrink the loader's epoch)
        run_dedup(str(corpus), DedupConfig(strategy=stage.split()[1], executor="pool", progress=False, dry_run=True))
    elif stage == "loader epoch":
        from medscale.data.config import LoaderConfig
        from medscale.data.loaders import create_loader

        loader = create_loader(str(corpus), LoaderConfig(loader="torch", image_size=32, batch_size=256,
                                                         num_workers=2, batch_dtype="uint8"), rank=0, world_size=1)
        print(json.dumps({"samples": sum(len(batch["key"]) for batch in loader)}), file=sys.stderr)
    elif stage == "retrieval":
        from medscale.eval.retrieval import nearest

        n = 6_636 * times  # the corpus's size: its test tenth queries the rest, 192-d features (ViT-Tiny's width)
        features = np.random.default_rng(0).standard_normal((n, 192), dtype=np.float32)
        nearest(features[: n // 10], features[n // 10:], 5)


def measure(stage: str, root: Path, times: int) -> Dict[str, float]:
    """Seconds (imports excluded) and peak RSS (MiB, the largest of the process and its children) of `stage` in a
    fresh process."""
    code = ("import resource, sys, time; sys.path.insert(0, %r); import scale; from pathlib import Path; "
            "scale.warm(); t = time.perf_counter(); scale.run_stage(%r, Path(%r), %d); s = time.perf_counter() - t; "
            "peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print('RESULT', s, peak / 1024)"
            % (str(Path(__file__).parent), stage, str(root), times))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO)))
    if done.returncode != 0:
        raise SystemExit(f"{stage} at {times}x failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    seconds, peak = map(float, line.split()[1:])
    return {"seconds": seconds, "peak_mib": peak}


def exponent(sizes: List[int], seconds: List[float]) -> float:
    """The slope of log(time) on log(size): time ~ size ** slope."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 10], help="multiples of the demo corpus")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medscale-scale-") as tmp:
        root = Path(tmp)
        table = {stage: [measure(stage, root, times) for times in args.sizes] for stage in STAGES}
    sizes = ", ".join(f"{t}x ({6_636 * t:,} images)" for t in args.sizes)
    print(f"\nsizes: {sizes}; 2 pool workers or loader workers; {time.strftime('%Y-%m-%d')}")
    head = " | ".join(f"{t}x s | {t}x peak MiB" for t in args.sizes)
    print(f"\n| stage | {head} | time exponent |")
    print("|---|" + "---|" * (2 * len(args.sizes) + 1))
    for stage, rows in table.items():
        cells = " | ".join(f"{r['seconds']:.1f} | {r['peak_mib']:.0f}" for r in rows)
        slope = exponent(args.sizes, [r["seconds"] for r in rows]) if len(rows) > 1 else float("nan")
        print(f"| {stage} | {cells} | {slope:.2f} |")


if __name__ == "__main__":
    with recorded("scale"):
        main()
