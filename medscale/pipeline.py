"""The whole pipeline from one command (`medscale demo`): shard the bundled real corpus, reduce it (Hash-6 per
volume), exclude what the contamination check finds of the evaluation test splits, pre-train MAE with DeepSpeed
ZeRO-2 on 2 ranks under torchrun while `eval watch` evaluates each checkpoint, evaluate beside the baselines, and
print one table with every figure, each stage's wall time and the paths worth opening.

Everything is written under one folder; each stage reads only the previous stage's files, so each can be rerun
alone (docs/getting-started.md gives the commands).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from medscale.config import MedscaleConfig
from medscale.core.config import to_yaml
from medscale.core.errors import MedscaleError
from medscale.demo import DEMO_DATA, DEMO_MODALITIES, demo_inputs
from medscale.launcher.commands import torchrun_command, trainer_args

logger = logging.getLogger(__name__)
DEMO_CONFIG = DEMO_DATA / "demo.yaml"
STAGE_TIMES = "stages.json"  # in the demo's output: each stage's wall seconds and the training speed, for reports
EVAL_SETS = ("breast", "pneumonia")  # the MedMNIST sets the demo evaluates on (their test splits kept out)


class StageFailed(MedscaleError):
    """A stage of the pipeline failed; the message names it and where its log is."""


def eval_datasets() -> List[str]:
    """`NAME=PATH` of the bundled evaluation sets."""
    return [f"{name}={DEMO_DATA / 'medmnist' / f'{name}mnist_28.npz'}" for name in EVAL_SETS]


def write_test_splits(folder: Path) -> List[str]:
    """Each evaluation set's test split alone, as the contamination check's `--against` inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for spec in eval_datasets():
        name, path = spec.split("=", 1)
        with np.load(path) as data:
            target = folder / f"{name}_test.npz"
            np.savez(target, test_images=data["test_images"], test_labels=data["test_labels"])
        out.append(f"{name}-test={target}")
    return out


def training_slowdown(run: Path, results: Path):
    """(median images/s while no evaluation ran, median while one did, window counts) from the run's log and the
    watch's record of when it evaluated; None when either side has no window."""
    from medscale.core.runs import read_log
    from medscale.eval.watch import busy_intervals

    busy = busy_intervals(results)
    windows = [w for w in read_log(run) if w.get("event") == "scalars" and w.get("step", 0) > 10]  # past start-up
    during = [w["train/images_per_s"] for w in windows if any(a <= w["time"] <= b for a, b in busy)]
    alone = [w["train/images_per_s"] for w in windows if not any(a <= w["time"] <= b for a, b in busy)]
    if not during or not alone:
        return None
    return float(np.median(alone)), float(np.median(during)), len(alone), len(during)


def _launch(command: Sequence[str], log: Path | None = None, env: Dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command`, its output into `log` (the child keeps its own handle; ours is closed at once)."""
    if log is None:
        return subprocess.Popen(list(command), env=env)
    with open(log, "w") as stream:
        return subprocess.Popen(list(command), stdout=stream, stderr=subprocess.STDOUT, env=env)


def build_demo_corpus(cfg: MedscaleConfig, output: Path, times: Dict[str, float]) -> Path:
    """Stages 1 and 2 into `output/corpus`: shard the bundled inputs (or `shard.inputs`), reduce them (hash-volume)
    and exclude what the contamination check finds of the evaluation test splits; each stage's seconds in `times`."""
    from medscale.data.service import run_sharding
    from medscale.dedup.contamination import run_contamination
    from medscale.dedup.service import run_dedup
    from medscale.dedup.volume import slice_reducer

    corpus = output / "corpus"
    start = time.perf_counter()
    for name, modality in DEMO_MODALITIES.items():
        cfg.shard.sources.setdefault(name, dataclasses.replace(cfg.shard.defaults, modality=modality))
    cfg.shard.inputs = cfg.shard.inputs or demo_inputs()
    cfg.shard.output = str(corpus)
    print(f"[1/5] shard: {len(cfg.shard.inputs)} inputs -> {corpus}", flush=True)
    print(run_sharding(cfg.shard, slice_reducer(cfg.shard.reduce, cfg.shard.reduce_threshold)
                       if cfg.shard.reduce else None).format(), flush=True)
    times["shard"] = time.perf_counter() - start

    start = time.perf_counter()
    print("[2/5] reduce (Less-is-More, hash-volume) and the contamination check", flush=True)
    cfg.dedup.progress = cfg.shard.progress
    print(run_dedup(str(corpus), cfg.dedup).format(), flush=True)
    check = dataclasses.replace(cfg.dedup, against=write_test_splits(output / "test-splits"), exclude=True)
    print(run_contamination(str(corpus), check).format(), flush=True)
    times["reduce + contamination"] = time.perf_counter() - start
    return corpus


def run_demo(cfg: MedscaleConfig, output: Path, config_file: Path, overrides: Sequence[str], ranks: int = 2,
             interval: float = 5.0) -> Dict[str, float]:
    """Every stage in turn into `output`; returns each stage's wall seconds (printed with the results)."""
    from medscale.eval.pool import evaluate
    from medscale.eval.results import markdown_table, read_results

    output.mkdir(parents=True, exist_ok=True)
    run, results = output / "run", output / "eval"
    times: Dict[str, float] = {}
    corpus = build_demo_corpus(cfg, output, times)

    start = time.perf_counter()
    cfg.eval.datasets = cfg.eval.datasets or eval_datasets()
    cfg.eval.checkpoints = cfg.eval.checkpoints or ["raw", f"random:{run / 'export'}"]
    cfg.eval.out = str(results)
    results.mkdir(parents=True, exist_ok=True)
    eval_config = results / "demo-eval.yaml"
    eval_config.write_text(to_yaml({"eval": dataclasses.replace(cfg.eval, checkpoints=["raw"])}))
    trainer = trainer_args(str(config_file), [*overrides, f"train.data={corpus}", f"train.run_dir={run}"])
    launcher = torchrun_command(dataclasses.replace(cfg.launch, nodes="1", rdzv_endpoint=None), ranks, "demo",
                                trainer)
    print(f"[3/5] pretrain {cfg.train.method} {cfg.train.model}: DeepSpeed ZeRO-{cfg.train.zero_stage} on {ranks} "
          f"ranks (torchrun), {cfg.train.max_steps} steps -> {run}\n      eval watch evaluates each checkpoint "
          f"as it is written (log: {results / 'watch.log'})", flush=True)
    trainer = _launch(launcher, env=dict(os.environ, OMP_NUM_THREADS="1"))
    run.mkdir(parents=True, exist_ok=True)
    watcher = _launch([sys.executable, "-m", "medscale", "eval", "watch", str(run), "-c", str(eval_config),
                       "--interval", str(interval), "eval.progress=false"], log=results / "watch.log")
    code = trainer.wait()
    if code != 0:
        watcher.terminate()
        raise StageFailed(f"pre-training exited with code {code} (its output is above); rerun `medscale demo` to "
                          "resume from the last checkpoint")
    times["pretrain (+ eval watch)"] = time.perf_counter() - start
    start = time.perf_counter()
    if watcher.wait() != 0:
        logger.warning("eval watch reported a failed evaluation (see %s); the final evaluation retries it",
                       results / "watch.log")
    times["watch catching up"] = time.perf_counter() - start

    start = time.perf_counter()
    print("[4/5] evaluate the last checkpoint beside random initialisation and raw pixels", flush=True)
    summary = evaluate(dataclasses.replace(cfg.eval, checkpoints=[str(run / "export"), *cfg.eval.checkpoints]))
    times["evaluate"] = time.perf_counter() - start
    if summary.failed:
        raise StageFailed("evaluation failed: " + "; ".join(summary.failed))

    slowdown = training_slowdown(run, results)
    rows = read_results(results)
    last = max((r["step"] for r in rows if r["kind"] == "export" and r["step"] is not None), default=None)
    shown = [r for r in rows if r["kind"] != "export" or r["step"] == last]
    print(f"\n[5/5] results (95% bootstrap intervals; test splits excluded from pre-training)\n"
          f"{markdown_table(shown)}\n", flush=True)
    print("| stage | wall time |\n|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds:.0f} s |")
    print(f"| total | {sum(times.values()):.0f} s |\n")
    (output / STAGE_TIMES).write_text(json.dumps({"seconds": times, "images_per_s": slowdown and {
        "alone": slowdown[0], "while_evaluating": slowdown[1]}}, indent=1))
    if slowdown:
        print(f"training while eval watch evaluated: {slowdown[1]:.0f} images/s, otherwise {slowdown[0]:.0f} "
              f"images/s (median of {slowdown[2]} and {slowdown[3]} logging windows): evaluation beside training "
              f"cost it {100 * (1 - slowdown[1] / slowdown[0]):.0f}% while it ran\n")
    from medscale.trainer.registry import method_class

    tag = method_class(cfg.train.method).picture_tag
    grids = {"reconstruction": "reconstructions:  ", "views": "views trained on: "}.get(tag, f"{tag}:")
    print("worth opening:\n"
          f"  tensorboard --logdir {output}     (training: {run / 'tb'}; evaluation: {results / 'tb'})\n"
          f"  loss curve:        {run / 'loss.png'}\n"
          f"  {grids} {run / 'images'}/step-*.png\n"
          f"  metric vs step:    {results / 'pictures'}/*-vs-step.png\n"
          f"  retrieval examples: {results / 'pictures'}/retrieval-*.png\n"
          f"  results:           {results / 'results.md'} and {results / 'results.parquet'}\n"
          f"  the backbone:      {run / 'export'} (plain timm + safetensors)", flush=True)
    return times
