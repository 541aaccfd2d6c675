"""Distributed equivalence on 2 gloo ranks under torchrun: SimCLR's loss and gradients with B per rank equal those
of one rank with 2B (negatives gathered, gradients through the gather); SwAV's codes likewise (Sinkhorn sums
all-reduced)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("dist_equivalence.py")
REPO = Path(__file__).resolve().parents[2]


def _run(cmd, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([*cmd, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_two_ranks_equal_one_rank_with_the_whole_batch(tmp_path):
    one = _run([sys.executable], tmp_path / "one.pt")
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
               tmp_path / "two.pt")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-6, atol=1e-6)
    assert one["grads"].abs().sum() > 0 and one["grads"].numel() > 5e6  # the whole ViT-Tiny and its head
    # equal up to float32 summation order: 1e-6 of the gradient's norm (a gradient that skipped the gather, or
    # counted it twice, is off by tens of percent)
    error = (two["grads"] - one["grads"]).norm() / one["grads"].norm()
    assert error < 1e-5, float(error)
    assert (two["grads"] - one["grads"]).abs().max() < 1e-5 * one["grads"].abs().max()
    torch.testing.assert_close(two["codes"], one["codes"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one["codes"].sum(1), torch.ones(8))
