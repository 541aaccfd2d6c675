"""The seeds' findings, reproduced small (results and commands in the README):

1. Pre-training helps (`--demo DIR`, a `medscale demo` output): the demo backbone against random initialisation and
   raw pixels on retrieval and linear probe, and the figures against the training step from `eval watch`.
2. Less is more (`--volumes DIR`, real volumes, e.g. Colin27 of Debian's mricron-data): the same number of epochs
   on the full volume corpus, on its Hash-6-reduced copy and on every-n at the same size; wall time of each and
   downstream linear-probe AUC.
3. DANN against the plain MLP (`--demo DIR` or raw pixels): source PneumoniaMNIST, target the same under a
   MedMNIST-C acquisition corruption (severity 5), adapted on the corrupted train split without its labels.

    python benchmarks/science.py --demo outputs/demo --volumes /tmp/mricron/usr/share/mricron/templates
    python benchmarks/science.py --demo outputs/demo-simclr --parts pretraining

Each complete part is also written to `docs/results/` for the docs to include: part 1 as `science-demo-METHOD.md`,
part 2 as `science-less-is-more.md` (at the default epochs), part 3 as `science-dann-METHOD.md` (`raw` without a
demo).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from record import recorded  # noqa: E402

from medscale.core.card import read_card  # noqa: E402
from medscale.eval.corruptions import corrupt_npz  # noqa: E402
from medscale.eval.pool import evaluate  # noqa: E402
from medscale.eval.registry import eval_config  # noqa: E402
from medscale.pipeline import DEMO_CONFIG, STAGE_TIMES, eval_datasets  # noqa: E402

PNEUMONIA = dict(s.split("=", 1) for s in eval_datasets())["pneumonia"]
FAMILIES = ("gaussian_noise", "contrast_down", "brightness_down")
PARTS = ("pretraining", "less-is-more", "dann")


def _cell(rows: List[Dict], **match) -> str:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    if not found:
        return ""
    r = found[-1]
    return f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" if r["low"] == r["low"] else f"{r['value']:.3f}"


def demo_method(demo: Path) -> str:
    """The method a `medscale demo` output pre-trained (from its export's card)."""
    return read_card(demo / "run" / "export").method or "backbone"


def pretraining_helps(demo: Path) -> None:
    """Part 1: the demo's results, the last checkpoint beside the baselines, then against the step; its stage times."""
    rows = pq.read_table(demo / "eval" / "results.parquet").to_pylist()
    steps = sorted({r["step"] for r in rows if r["kind"] == "export"})
    names = {r["kind"]: r["checkpoint"] for r in rows if r["kind"] != "export"}
    card = read_card(demo / "run" / "export")
    method = card.method or "backbone"
    print(f"\n*Part 1, pre-training helps: `medscale demo`: {method} {card.model}, step {steps[-1]}.*\n")
    print(f"| dataset | task | metric | {method}, step {steps[-1]} | random init | raw pixels |\n"
          "|---|---|---|---|---|---|")
    for dataset in ("breast", "pneumonia"):
        for task, metric in [("retrieval", m) for m in ("ACC@1", "ACC@3", "ACC@5", "mAP@5", "MMV@5")] + \
                [("knn", "auc"), ("linear_probe", "auc")]:
            cells = [_cell(rows, dataset=dataset, task=task, metric=metric, kind="export", step=steps[-1]),
                     _cell(rows, dataset=dataset, task=task, metric=metric, checkpoint=names.get("random")),
                     _cell(rows, dataset=dataset, task=task, metric=metric, checkpoint=names.get("raw"))]
            print(f"| {dataset} | {task} | {metric.replace('auc', 'AUC')} | " + " | ".join(cells) + " |")
    print("\nAgainst the step (`eval watch`, each checkpoint as it was written):\n")
    print("| step | " + " | ".join(f"{d} ACC@1 | {d} linear-probe AUC" for d in ("breast", "pneumonia")) + " |")
    print("|---|" + "---|" * 4)
    for step in steps:
        cells = [_cell(rows, dataset=d, task=t, metric=m, kind="export", step=step)
                 for d in ("breast", "pneumonia") for t, m in (("retrieval", "ACC@1"), ("linear_probe", "auc"))]
        print(f"| {step} | " + " | ".join(cells) + " |")
    if (demo / STAGE_TIMES).exists():
        stages = json.loads((demo / STAGE_TIMES).read_text())
        seconds = stages["seconds"]
        print("\n| stage | wall time |\n|---|---|")
        for stage, value in seconds.items():
            print(f"| {stage} | {value:.0f} s |")
        print(f"| total | {sum(seconds.values()) / 60:.1f} min |")
        speed = stages.get("images_per_s")
        if speed:
            print(f"\nTraining ran at {speed['alone']:.0f} images/s, {speed['while_evaluating']:.0f} while the "
                  "watch evaluated a checkpoint.")


def _pretrain(corpus: Path, run: Path, steps: int) -> Dict:
    done = subprocess.run([sys.executable, "-m", "medscale", "pretrain", "-c", str(DEMO_CONFIG), "--json",
                           f"train.data={corpus}", f"train.run_dir={run}", f"train.max_steps={steps}",
                           f"train.checkpoint_every={steps}", f"train.warmup_steps={max(1, steps // 10)}",
                           "train.progress=false"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"pre-training on {corpus} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def less_is_more(volumes: Path, out: Path, epochs: int) -> None:
    """Part 2: full, Hash-6 per volume, every-n at the same size; same epochs; wall time and linear-probe AUC."""
    from medscale.core.storage import filesystem
    from medscale.data.config import ShardConfig
    from medscale.data.manifest import read_manifest
    from medscale.data.service import run_sharding
    from medscale.dedup.config import DedupConfig
    from medscale.dedup.service import run_dedup
    from medscale.demo import demo_inputs

    inputs = [f"colin27={p}" for p in sorted(volumes.glob("ch2*.nii.gz"))]
    inputs += [s for s in demo_inputs() if not s.split("=", 1)[1].endswith(".npz")]  # DICOM series, cine, NIfTI
    base = out / "volumes"
    shutil.rmtree(base, ignore_errors=True)
    run_sharding(ShardConfig(inputs=inputs, output=str(base / "full"), max_size=64, progress=False))

    def kept(corpus: Path) -> int:
        return sum(r["status"] == "kept" for r in read_manifest(*filesystem(str(corpus))).to_pylist())

    shutil.copytree(base / "full", base / "hash6")
    run_dedup(str(base / "hash6"), DedupConfig(strategy="hash-volume", executor="local", progress=False))
    n_full, n_hash = kept(base / "full"), kept(base / "hash6")
    every = max(2, round(n_full / max(1, n_hash)))
    shutil.copytree(base / "full", base / "every-n")
    run_dedup(str(base / "every-n"), DedupConfig(strategy="every-n", every_n=every, executor="local",
                                                 progress=False))
    print(f"\n*Part 2, less is more: {len(inputs)} volume inputs: Colin27 from {volumes}, the demo's DICOM and NIfTI; "
          f"{epochs} epochs each.*\n")
    print("| corpus | kept slices | steps | pre-training s | breast LP AUC | pneumonia LP AUC |")
    print("|---|---|---|---|---|---|")
    for variant in ("full", "hash6", "every-n"):
        corpus = base / variant
        n = kept(corpus)
        steps = max(1, epochs * n // 32)
        summary = _pretrain(corpus, base / f"run-{variant}", steps)
        cfg = eval_config(checkpoints=[str(base / f"run-{variant}" / "export")], tasks=["linear_probe"],
                          datasets=eval_datasets(), out=str(base / f"eval-{variant}"), progress=False)
        result = evaluate(cfg)
        rows = pq.read_table(base / f"eval-{variant}" / "results.parquet").to_pylist()
        name = "every-n (n=%d)" % every if variant == "every-n" else variant
        print(f"| {name} | {n} | {steps} | {summary['seconds']:.0f} | "
              f"{_cell(rows, dataset='breast', metric='auc')} | {_cell(rows, dataset='pneumonia', metric='auc')} |"
              + (f" FAILED {result.failed}" if result.failed else ""))


def dann_against_mlp(demo: Path | None, out: Path) -> None:
    """Part 3: DANN and the plain network on PneumoniaMNIST -> its corrupted copies."""
    checkpoint = str(demo / "run" / "export") if demo else "raw"
    print(f"\n*Part 3, DANN against the plain MLP: {'the demo backbone' if demo else 'raw pixels'}; source "
          "PneumoniaMNIST, target the same under a corruption at severity 5.*\n")
    print("| target | plain: source acc | plain: target acc | plain: target F1 | DANN: source acc | "
          "DANN: target acc | DANN: target F1 |\n|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        target = out / "corrupted" / f"pneumonia-{family}.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        corrupt_npz(PNEUMONIA, str(target), family, 5)
        cfg = eval_config(checkpoints=[checkpoint], tasks=["dann"], datasets=[f"pneumonia={PNEUMONIA}"],
                          out=str(out / f"dann-{family}"), progress=False)
        cfg.dann.target = f"{family}={target}"
        evaluate(cfg)
        rows = pq.read_table(out / f"dann-{family}" / "results.parquet").to_pylist()
        cells = [_cell(rows, metric=m) for m in ("plain_source_accuracy", "plain_target_accuracy", "plain_target_f1",
                                                 "source_accuracy", "target_accuracy", "target_f1")]
        print(f"| {family} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a `medscale demo` output folder")
    parser.add_argument("--volumes", type=Path, help="a folder with Colin27's ch2.nii.gz / ch2bet.nii.gz")
    parser.add_argument("--out", type=Path, default=Path("outputs/science"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to run (pretraining needs --demo, less-is-more --volumes)")
    args = parser.parse_args()
    if args.demo and "pretraining" in args.parts:
        with recorded(f"science-demo-{demo_method(args.demo)}", record=True, script="science"):
            pretraining_helps(args.demo)
    if args.volumes and "less-is-more" in args.parts:
        with recorded("science-less-is-more", record=args.epochs == parser.get_default("epochs"),
                      script="science"):
            less_is_more(args.volumes, args.out, args.epochs)
    if "dann" in args.parts:
        with recorded(f"science-dann-{demo_method(args.demo) if args.demo else 'raw'}", record=True, script="science"):
            dann_against_mlp(args.demo, args.out)


if __name__ == "__main__":
    main()
