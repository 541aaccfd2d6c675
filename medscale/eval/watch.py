"""`medscale eval watch RUN_DIR`: evaluate each new complete checkpoint once, as training writes them, in a
separate low-priority process per checkpoint; the trainer never waits on evaluation and never imports it.

Each checkpoint's export is first copied to `OUT/exports/RUN@STEP/` (training prunes old checkpoints, and an
evaluation must not read a folder that is being deleted); the results go to `OUT` with the baselines of
`eval.checkpoints` beside them (evaluated once: a rerun skips results present).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from medscale.core.config import to_yaml
from medscale.core.errors import ConfigError
from medscale.core.lifeline import die_with_parent
from medscale.eval.config import EvalConfig
from medscale.trainer import checkpoint as ck

logger = logging.getLogger(__name__)
EXPORTS = "exports"
WATCH_LOG = "watch.jsonl"  # one line per evaluation: checkpoint, step, start, end (epoch seconds), exit code
NICENESS = 10  # evaluation yields the CPU to training on a shared machine


TERMINAL = ("done", "stop_at_step", "preempted", "non_finite_loss")  # the run stopped (it may resume later)


def finished(run_dir: Path) -> bool:
    """True when the run's latest start (or resume) was followed by a stop: done, a time box, a preemption or a
    non-finite loss; a stop left in the log by an earlier attempt does not count."""
    events = [e.get("event") for e in ck.read_log(run_dir)]
    starts = [i for i, e in enumerate(events) if e in ("start", "resume")]
    return any(e in TERMINAL for e in events[starts[-1] if starts else 0:])


def _evaluate_in_child(export: Path, cfg: EvalConfig) -> int:
    """`medscale eval` of one export (and the baselines) in a child process at lower priority; its config (which
    may hold storage credentials) goes through a pipe, never a file."""
    command = [sys.executable, "-m", "medscale", "eval", "-c", "-", "--checkpoints", str(export), *cfg.checkpoints]
    return subprocess.run(command, input=to_yaml({"eval": cfg}, redact=False), text=True,
                          preexec_fn=_child_setup).returncode


def _child_setup() -> None:
    os.nice(NICENESS)
    die_with_parent()  # a killed watcher takes its evaluation with it (its helpers follow by their own lifeline)


def _keep(checkpoint: Path, exports: Path, run: Path) -> Path | None:
    """Copy a checkpoint's export out of the run (training prunes old checkpoints); None if it was pruned first."""
    target = exports / f"{run.name}@{ck.step_of(checkpoint)}"
    if target.exists():
        return target
    partial = target.with_name(target.name + ".tmp")
    try:
        shutil.copytree(checkpoint / ck.EXPORT, partial, dirs_exist_ok=True)
    except OSError:  # pruned by training while (or before) we copied it
        shutil.rmtree(partial, ignore_errors=True)
        logger.warning("%s was pruned before it could be evaluated", checkpoint)
        return None
    partial.rename(target)
    return target


def busy_intervals(out: Path) -> List[tuple]:
    """(start, end) epoch seconds of each evaluation `watch` ran into `out`."""
    log = Path(out) / WATCH_LOG
    lines = log.read_text().splitlines() if log.exists() else []
    return [(e["start"], e["end"]) for e in (json.loads(line) for line in lines if line.strip())]


def watch(run_dir: str, cfg: EvalConfig, once: bool = False, interval: float = 30.0) -> int:
    """Evaluate new complete checkpoints of `run_dir` until the run is done (or once, with `once`); returns the
    exit code (1 when an evaluation failed)."""
    if not cfg.out:
        raise ConfigError("eval watch needs --out DIR (or eval.out)")
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    exports = Path(cfg.out) / EXPORTS
    exports.mkdir(parents=True, exist_ok=True)
    code, seen = 0, set()
    while True:
        done = finished(run)  # read before listing: a checkpoint written after this is seen next time round
        new: List[Path] = [c for c in ck.complete_checkpoints(run) if c.name not in seen]
        kept = [(c, _keep(c, exports, run)) for c in new]  # all copied first: evaluating one takes a while
        for checkpoint, target in kept:
            seen.add(checkpoint.name)
            if target is None:
                continue
            logger.info("evaluating %s (step %d)", checkpoint, ck.step_of(checkpoint))
            started = time.time()
            child = _evaluate_in_child(target, cfg)
            with open(Path(cfg.out) / WATCH_LOG, "a") as fh:
                fh.write(json.dumps({"checkpoint": checkpoint.name, "step": ck.step_of(checkpoint), "start": started,
                                     "end": time.time(), "exit_code": child}) + "\n")
            code |= 1 if child else 0
        if once or (done and not new):
            return code
        time.sleep(interval)
