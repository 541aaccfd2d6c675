"""The front door: a wheel built from this checkout works outside it. Built with pip, installed alone into a
folder of its own (its dependencies are the test environment's), then used from another directory: the presets
and the demo data ship inside it, `medscale demo --help` answers, and a tiny `medscale pretrain` runs with a
preset named, not pathed, printing nothing of third parties (no torch CUDA probe, no DeepSpeed op-build lines)."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "core" / "v1" / "corpus"  # data only: a corpus as `medscale shard` writes it


@pytest.mark.slow
def test_the_wheel_works_outside_the_checkout(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("medscale-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("medscale/presets/mae-tiny.yaml", "medscale/demo_data/demo.yaml", "medscale/py.typed",
                    "medscale/demo_data/medmnist/breastmnist_28.npz", "medscale/eval/options.py"):
        assert shipped in names, shipped
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                                "--target", str(site), str(wheel)], capture_output=True, text=True, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               MEDSCALE_LOG_DIR=str(tmp_path / "logs"))

    def medscale(*args):
        return subprocess.run([sys.executable, "-m", "medscale", *args], capture_output=True, text=True,
                              cwd=elsewhere, env=env, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import medscale; print(medscale.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel's copy, not the checkout's
    helped = medscale("demo", "--help")
    assert helped.returncode == 0 and "usage: medscale demo" in helped.stdout, helped.stderr[-2000:]
    done = medscale("pretrain", "-c", "mae-tiny", f"train.data={CORPUS}", f"train.run_dir={elsewhere / 'run'}",
                    "train.max_steps=2", "train.checkpoint_every=2", "train.progress=false", "loader.batch_size=8",
                    "loader.num_workers=0", "train.mae.decoder_depth=1", "train.optimizer=sgd")
    assert done.returncode == 0, done.stderr[-3000:]
    for chatter in ("built successfully", "No CUDA runtime", "Warning", "[INFO]"):  # third parties stay quiet
        assert chatter not in done.stdout + done.stderr, (chatter, done.stderr[-3000:])
    logged = "".join(p.read_text() for p in (tmp_path / "logs").glob("medscale-pretrain-*.log"))
    assert "built successfully" in logged and "medscale.trainer" in logged, logged[-3000:]  # all of it, in its log
    card = json.loads((elsewhere / "run" / "export" / "card.json").read_text())
    assert card["step"] == 2 and card["model"] == "vit_tiny_patch16_224"
