"""The README's main command end to end, with a small budget: shard, reduce, contamination, pre-training on 2
ranks under torchrun with eval watch beside it, the final evaluation and the printed table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from medscale.core.storage import filesystem
from medscale.data.manifest import read_manifest
from medscale.pipeline import DEMO_CONFIG, STAGE_TIMES, eval_datasets

REPO = Path(__file__).resolve().parents[1]


def small_eval_config(config: Path, folder: Path) -> Path:
    """`config` evaluating on both bundled sets with PneumoniaMNIST cut to 800 images: the same pipeline, and the
    evaluation (a backbone's forward pass over every image, for each checkpoint) a fifth of the full sets'."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets = dict(spec.split("=", 1) for spec in eval_datasets())
    with np.load(datasets["pneumonia"]) as data:
        np.savez(folder / "pneumonia.npz", **{f"{split}_{kind}": data[f"{split}_{kind}"][:count]
                                            for split, count in (("train", 500), ("val", 100), ("test", 200))
                                            for kind in ("images", "labels")})
    cfg = yaml.safe_load(config.read_text())
    cfg["eval"]["datasets"] = [f"breast={datasets['breast']}", f"pneumonia={folder / 'pneumonia.npz'}"]
    (folder / config.name).write_text(yaml.safe_dump(cfg))
    return folder / config.name


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    config = small_eval_config(DEMO_CONFIG, tmp_path / "config")
    done = subprocess.run([sys.executable, "-m", "medscale", "demo", "-c", str(config), "-o", str(out),
                           "train.max_steps=12", "train.checkpoint_every=12", "train.warmup_steps=2",
                           "eval.linear_probe.epochs=5", "eval.bootstrap=50"], capture_output=True, text=True,
                          timeout=1200, cwd=REPO, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "quarantined" in done.stdout and "medscale dedup hash-volume dhash<=6" in done.stdout
    rows = read_manifest(*filesystem(str(out / "corpus"))).to_pylist()  # the real multi-source corpus
    assert {r["kind"] for r in rows if r["status"] == "kept"} == {"npz", "dicom", "nifti"}
    assert {"US", "CR", "CT", "MR"} <= {r["modality"] for r in rows if r["status"] == "kept"}
    dups = [r for r in rows if r["status"] == "duplicate"]
    assert dups and all(r["volume"] is not None and r["shard"] for r in dups)  # decided per volume, in shards
    assert (out / "corpus" / "dedup" / "groups.png").exists()
    report = json.loads((out / "corpus" / "dedup" / "contamination.json").read_text())
    assert report["excluded"] >= 780  # every test image of both evaluation sets is kept out of pre-training
    rows = pq.read_table(out / "eval" / "results.parquet").to_pylist()
    columns = {(r["checkpoint"], r["dataset"], r["task"]) for r in rows}
    for name in ("run@12", "raw pixels", "random vit_tiny_patch16_224"):
        for dataset in ("breast", "pneumonia"):
            for task in ("retrieval", "knn", "linear_probe"):
                assert (name, dataset, task) in columns, (name, dataset, task)
    assert "| run@12 | random vit_tiny_patch16_224 | raw pixels |" in done.stdout
    assert "| pretrain (+ eval watch) |" in done.stdout and "| total |" in done.stdout
    stages = json.loads((out / STAGE_TIMES).read_text())  # what benchmarks/science.py reports beside the table
    assert list(stages["seconds"]) == ["shard", "reduce + contamination", "pretrain (+ eval watch)",
                                       "watch catching up", "evaluate"] and min(stages["seconds"].values()) >= 0
    for path in ("run/loss.png", "run/images/step-00000012.png", "run/export/card.json", "eval/results.md",
                 "eval/pictures/retrieval-vs-step.png", "eval/pictures/retrieval-run@12-breast.png"):
        assert (out / path).exists(), path
    assert json.loads((out / "run" / "checkpoints" / "step-00000012" / "meta.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_the_contrastive_demo_config_runs_the_same_way(tmp_path):
    out = tmp_path / "demo"
    config = small_eval_config(REPO / "configs" / "demo-simclr.yaml", tmp_path / "config")
    done = subprocess.run([sys.executable, "-m", "medscale", "demo", "-c", str(config), "-o", str(out),
                           "train.max_steps=8", "train.checkpoint_every=8", "train.warmup_steps=2",
                           "eval.linear_probe.epochs=5", "eval.bootstrap=50"], capture_output=True, text=True,
                          timeout=1200, cwd=REPO, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[3/5] pretrain simclr resnet18" in done.stdout and "| run@8 | random resnet18 | raw pixels |" in done.stdout
    rows = pq.read_table(out / "eval" / "results.parquet").to_pylist()
    assert {(r["checkpoint"], r["dataset"]) for r in rows if r["task"] == "linear_probe"} >= {
        ("run@8", "breast"), ("run@8", "pneumonia"), ("random resnet18", "pneumonia")}
    card = json.loads((out / "run" / "export" / "card.json").read_text())
    assert (card["method"], card["in_chans"], card["step"]) == ("simclr", 1, 8)
    assert "views trained on:" in done.stdout and (out / "run" / "images" / "step-00000008.png").exists()
