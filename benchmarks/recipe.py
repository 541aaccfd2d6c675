"""The demo's recipe study: which pre-training recipe beats raw pixels on both evaluation sets, inside the demo's
budget. Each row pre-trains the demo's MAE (DeepSpeed ZeRO-2, 2 torchrun ranks, the demo's 1,000 steps) with one
change, then evaluates its export on BreastMNIST and PneumoniaMNIST (retrieval, kNN, linear probe; 95% bootstrap
intervals), beside raw pixels under the same evaluation settings.

Each row's figures are kept in `benchmarks/rows/recipe/ROW.json` as it finishes (committed with the code: a study
outlives a session and its machine); a rerun adds only the rows still missing, and the table is printed (and written
to docs/results/recipe.md) once every row is there. Checkpoints, logs and the corpus go to OUT.

Run: `python benchmarks/recipe.py [--out outputs/recipe] [--rows NAME,NAME]` (the corpus is built in OUT once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from record import recorded  # noqa: E402

from medscale.config import load  # noqa: E402
from medscale.core.card import read_card, write_card  # noqa: E402
from medscale.eval.pool import evaluate  # noqa: E402
from medscale.eval.results import read_results  # noqa: E402
from medscale.launcher.commands import torchrun_command, trainer_args  # noqa: E402
from medscale.pipeline import DEMO_CONFIG, EVAL_SETS, build_demo_corpus, eval_datasets  # noqa: E402

PROBE_BLR = "eval.linear_probe.blr=1.0"
DEFAULT = "demo default (blr 1.5e-4, mask 0.75, 32 px)"


@dataclasses.dataclass(frozen=True)
class Row:
    """One recipe: pre-training overrides (None: raw pixels), evaluation overrides, and optionally the row whose
    backbone it evaluates instead of pre-training its own, with `timm.create_model` arguments its export changes."""

    name: str
    train: Optional[List[str]]
    eval: List[str] = dataclasses.field(default_factory=list)
    reuse: Optional[str] = None
    export_kwargs: Dict[str, str] = dataclasses.field(default_factory=dict)


ROWS: List[Row] = [
    Row("raw pixels", None),
    Row("raw pixels, probe blr 1.0", None, [PROBE_BLR]),
    Row(DEFAULT, []),
    Row("demo default, probe blr 1.0", [], [PROBE_BLR], reuse=DEFAULT),
    # the pool changes only how the export reads its tokens, so the default's weights are exactly what it trains
    Row("demo default, mean-pooled patch tokens", ["train.mae.pool=avg"], reuse=DEFAULT,
        export_kwargs={"global_pool": "avg"}),
    Row("mask ratio 0.5", ["train.mae.mask_ratio=0.5"]),
    Row("64 px, 8-px patches", ["loader.image_size=64", "train.patch_size=8"]),
    Row("breast weighted x8", ["loader.source_weights.breastmnist=8.0"]),
    Row("blr 1.5e-3", ["train.blr=1.5e-3"]),
]
CELLS = [("retrieval", "ACC@1"), ("retrieval", "mAP@5"), ("knn", "auc"), ("linear_probe", "auc")]


def slug(name: str) -> str:
    """A folder name for row `name`."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")[:60]


def pretrain(corpus: Path, run: Path, overrides: Sequence[str], ranks: int = 2) -> float:
    """The demo's pre-training with `overrides` on `ranks` torchrun ranks into `run`; its wall seconds."""
    cfg = load(DEMO_CONFIG, overrides)
    line = torchrun_command(dataclasses.replace(cfg.launch, nodes="1", rdzv_endpoint=None), ranks, "recipe",
                            trainer_args(str(DEMO_CONFIG), [*overrides, f"train.data={corpus}",
                                                            f"train.run_dir={run}", "train.progress=false"]))
    start = time.perf_counter()
    run.mkdir(parents=True, exist_ok=True)
    with open(run.parent / "pretrain.log", "w") as log:
        done = subprocess.run(line, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise SystemExit(f"pre-training into {run} failed (exit {done.returncode}): see {run.parent / 'pretrain.log'}")
    return time.perf_counter() - start


def evaluate_row(checkpoint: str, out: Path, overrides: Sequence[str]) -> Tuple[float, List[Dict]]:
    """The demo's evaluation (its tasks, sets and bootstrap) of `checkpoint` into `out`; (seconds, result rows)."""
    cfg = load(DEMO_CONFIG, overrides).eval
    cfg = dataclasses.replace(cfg, datasets=eval_datasets(), checkpoints=[checkpoint], out=str(out), progress=False)
    start = time.perf_counter()
    summary = evaluate(cfg)
    if summary.failed:
        raise SystemExit(f"evaluation of {checkpoint} failed: {'; '.join(summary.failed)}")
    return time.perf_counter() - start, read_results(out)


ROWS_DIR = ROOT / "benchmarks" / "rows" / "recipe"


def run_row(row: Row, corpus: Path, out: Path) -> Dict:
    """`row`'s figures (pre-training unless it is raw pixels or reuses another row's backbone, then evaluation)."""
    folder = out / slug(row.name)
    pretrain_s = 0.0
    if row.train is None:
        checkpoint = "raw"
    elif row.reuse is not None:
        checkpoint = str(out / slug(row.reuse) / "run" / "export")
        if not Path(checkpoint).is_dir():
            raise SystemExit(f"row {row.name!r} evaluates the backbone of {row.reuse!r}, which is not in {checkpoint}: "
                             f"delete {ROWS_DIR / (slug(row.reuse) + '.json')} and rerun to pre-train it again")
        pretrain_s = json.loads((ROWS_DIR / f"{slug(row.reuse)}.json").read_text())["pretrain_s"]
        if row.export_kwargs:
            checkpoint = str(reexport(Path(checkpoint), folder / "export", row.export_kwargs))
    else:
        pretrain_s = pretrain(corpus, folder / "run", row.train)
        checkpoint = str(folder / "run" / "export")
    eval_s, results = evaluate_row(checkpoint, folder / "eval", row.eval)
    cells = {f"{r['dataset']}/{r['task']}/{r['metric']}": [r["value"], r["low"], r["high"]] for r in results}
    return {"name": row.name, "train": row.train, "eval": row.eval, "pretrain_s": pretrain_s, "eval_s": eval_s,
            "cells": cells}


def reexport(export: Path, out: Path, kwargs: Dict[str, str]) -> Path:
    """A copy of `export` in `out` whose card rebuilds the model with `kwargs` changed (the same weights)."""
    shutil.copytree(export, out, dirs_exist_ok=True)
    card = read_card(out)
    write_card(out, dataclasses.replace(card, kwargs={**card.kwargs, **kwargs}))
    return out


def _cell(row: Dict, key: str) -> str:
    value, low, high = row["cells"].get(key, [float("nan")] * 3)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low == low else f"{value:.3f}"


def table(rows: List[Dict]) -> str:
    """One markdown table per evaluation set: each recipe's figures, seconds and whether it beats raw pixels."""
    raw = {r["name"]: r for r in rows if r["train"] is None}
    lines = []
    for dataset in EVAL_SETS:
        lines += [f"\n**{dataset}**\n", "| recipe | pre-train s | eval s | " +
                  " | ".join(f"{t} {m}" for t, m in CELLS) + " |", "|---|---|---|" + "---|" * len(CELLS)]
        for row in rows:
            cells = [_cell(row, f"{dataset}/{t}/{m}") for t, m in CELLS]
            lines.append(f"| {row['name']} | {row['pretrain_s']:.0f} | {row['eval_s']:.0f} | " + " | ".join(cells)
                         + " |")
    base = raw.get("raw pixels")
    if base:
        default_s = next((r["pretrain_s"] + r["eval_s"] for r in rows if r["name"] == DEFAULT), None)
        beats = [r["name"] for r in rows if r["train"] is not None and all(
            r["cells"][f"{d}/retrieval/{m}"][0] > base["cells"][f"{d}/retrieval/{m}"][0]
            for d in EVAL_SETS for m in ("ACC@1", "mAP@5")) and
            (default_s is None or r["pretrain_s"] + r["eval_s"] <= 1.1 * default_s)]
        lines.append("\nBeats raw pixels on both sets' retrieval ACC@1 and mAP@5 (point estimates) within the demo's "
                     f"time (+10%): {', '.join(beats) if beats else 'none'}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "recipe")
    parser.add_argument("--rows", default="", help="comma-separated row names to run (default: every row)")
    args = parser.parse_args()
    wanted = [r for r in ROWS if not args.rows or r.name in args.rows.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "corpus"
    if not (corpus / "manifest.parquet").exists():
        build_demo_corpus(load(DEMO_CONFIG), args.out, {})
    rows = []
    for row in wanted:
        saved = ROWS_DIR / f"{slug(row.name)}.json"
        if not saved.exists():
            print(f"row: {row.name}", file=sys.stderr, flush=True)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(run_row(row, corpus, args.out), indent=1))
        rows.append(json.loads(saved.read_text()))
    print("The demo corpus (bundled MedMNIST and DICOM/NIfTI, hash-volume reduced, test splits excluded); each row "
          "pre-trains the demo's MAE for its 1,000 steps on 2 torchrun ranks with one change, then the demo's "
          "evaluation (95% bootstrap intervals); pre-training and evaluation seconds on this machine.")
    print(table(rows))


if __name__ == "__main__":
    with recorded("recipe"):
        main()
