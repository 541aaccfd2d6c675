"""Preemption cost under `medscale launch` (torchrun, 2 CPU ranks, the tiny MAE): the work lost per preemption and
the time from a relaunch to its first new step, in one run.

Three launches of one run directory, checkpoint every INTERVAL steps:
  1. a fresh start (the baseline of start-up time), preempted with SIGUSR1 (the scheduler's warning) a few steps
     after a checkpoint: the ranks save at the next step, so the relaunch redoes nothing;
  2. the relaunch, killed with SIGKILL on every process a few steps after a checkpoint (a lost machine: no
     warning): the relaunch redoes the steps since the last checkpoint, at most one interval;
  3. the relaunch that finishes.
Work lost is the steps redone (the last step logged before the stop minus the step resumed from); relaunch time is
from the launch command's start to its first new step's log line, beside the fresh start's.
Run: `python benchmarks/launch.py` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from record import recorded  # noqa: E402

from medscale.core.lifeline import descendants  # noqa: E402

ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")


def corpus(root: Path) -> Path:
    """The bundled BreastMNIST train split, sharded."""
    data = np.load(REPO / "medscale" / "demo_data" / "medmnist" / "breastmnist_28.npz")
    np.savez(root / "breast.npz", train_images=data["train_images"], train_labels=data["train_labels"])
    subprocess.run([sys.executable, "-m", "medscale", "shard", f"breast={root / 'breast.npz'}", "-o",
                    str(root / "corpus"), "shard.progress=false"], check=True, env=ENV, capture_output=True)
    return root / "corpus"


def events(run_dir: Path) -> list:
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def launch(args: list, stop_after: int | None, sig: int | None) -> dict:
    """One launch; with `sig`, that signal once `stop_after` steps of this launch are logged. Returns its exit code,
    the seconds from its start to its first new step, the last step logged and where it resumed from."""
    run_dir = Path(next(a for a in args if a.startswith("train.run_dir=")).split("=", 1)[1])
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "medscale", "launch", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while proc.poll() is None:
        new = [e for e in events(run_dir) if e["event"] == "scalars" and e["time"] >= start]
        if new and first is None:
            first = new[0]["time"] - start
        if sig is not None and len(new) >= stop_after:
            targets = [proc.pid] if sig != signal.SIGKILL else [proc.pid, *descendants(proc.pid)]
            for pid in targets:
                os.kill(pid, sig)
            sig = None
        time.sleep(0.2)
    log = [e for e in events(run_dir) if e["time"] >= start]  # (a resume drops the log past its step)
    resumed = next((e["step"] for e in log if e["event"] in ("resume", "start")), None)
    last = max((e["step"] for e in log if e["event"] == "scalars"), default=None)
    return {"code": proc.returncode, "first_step_s": first, "last": last, "from": resumed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=int, default=10, help="train.checkpoint_every")
    args = parser.parse_args()
    k = args.interval
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = ["-c", str(REPO / "configs" / "mae-tiny.yaml"), f"train.data={corpus(root)}",
               f"train.run_dir={root / 'run'}", "train.progress=false", "train.log_every=1", "loader.batch_size=16",
               f"train.checkpoint_every={k}", f"train.max_steps={4 * k}", "launch.procs_per_node=2"]
        fresh = launch(run, k + 3, signal.SIGUSR1)
        killed = launch(run, k + 3, signal.SIGKILL)
        final = launch(run, None, None)
    rows = [("SIGUSR1 (scheduler warning)", fresh, killed), ("SIGKILL (machine lost)", killed, final)]
    print("\n| stop | exit code | last step logged | relaunch resumed from | steps redone | checkpoint interval |\n"
          "|---|---|---|---|---|---|")
    for name, stopped, after in rows:
        print(f"| {name} | {stopped['code']} | {stopped['last']} | {after['from']} | "
              f"{stopped['last'] - after['from']} | {k} |")
    print(f"\n| launch | seconds to its first new step | ratio to the fresh start |\n|---|---|---|\n"
          f"| fresh start (baseline) | {fresh['first_step_s']:.1f} | 1.00 |")
    for name, result in (("relaunch after SIGUSR1", killed), ("relaunch after SIGKILL", final)):
        print(f"| {name} | {result['first_step_s']:.1f} | {result['first_step_s'] / fresh['first_step_s']:.2f} |")
    print(f"\nfinal launch exit code {final['code']} (0: done at step {final['last']})")


if __name__ == "__main__":
    with recorded("launch"):
        main()
