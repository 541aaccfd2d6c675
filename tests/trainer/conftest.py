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
