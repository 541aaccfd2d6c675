"""The trainer tests' shared parts: a real multi-source corpus from the demo data, how runs are started."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medscale.data.service import run_sharding
from tests.conftest import MEDMNIST, PYDICOM_DATA, shard_config

REPO = Path(__file__).resolve().parents[2]
ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
MAE_TINY = REPO / "configs" / "mae-tiny.yaml"


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory):
    """Real multi-source data: BreastMNIST (ultrasound) and a multi-frame MR DICOM, sharded."""
    root = tmp_path_factory.mktemp("train")
    shutil.copy(MEDMNIST / "breastmnist_28.npz", root / "breast.npz")
    shutil.copy(PYDICOM_DATA / "emri_small.dcm", root / "mr.dcm")
    run_sharding(shard_config([f"breast={root / 'breast.npz'}", f"mr={root / 'mr.dcm'}"], root / "corpus",
                              max_size=64))
    return root / "corpus"


def torchrun_cmd(*args, ranks=2):
    """`python -m torch.distributed.run --standalone` with `ranks` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]


def run_cmd(cmd, timeout=600):
    """Run `cmd` from the repository with the CPU environment; the finished process."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **ENV), cwd=REPO)


def logged_losses(run_dir):
    """{step: train/loss} from a run's log.jsonl."""
    lines = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return {e["step"]: e["train/loss"] for e in lines if e["event"] == "scalars"}


def mae_args(corpus, run_dir, *extra):
    """`-m medscale pretrain` of a tiny MAE on `corpus` into `run_dir` (a step each log line), then `extra`; uint8
    batches, normalised by the trainer: the GPU default's CPU twin (the pipeline tests train on float32 batches)."""
    return ["-m", "medscale", "pretrain", "-c", str(MAE_TINY), f"train.data={corpus}", f"train.run_dir={run_dir}",
            "train.progress=false", "train.log_every=1", "train.warmup_steps=2", "loader.batch_size=8",
            "loader.num_workers=1", "loader.batch_dtype=uint8", "train.mae.decoder_depth=1", *extra]


@pytest.fixture(scope="session")
def straight_run(train_corpus, tmp_path_factory):
    """An uninterrupted 6-step run on 2 ranks (ZeRO 2), checkpoints at steps 3 and 6: copy it before changing it."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    done = run_cmd(torchrun_cmd(*mae_args(train_corpus, run_dir, "train.max_steps=6", "train.checkpoint_every=3")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir
