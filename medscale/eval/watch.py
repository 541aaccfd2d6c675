"""`medscale eval watch RUN_DIR`: evaluate each new complete checkpoint once, as training writes them, in a
separate low-priority process per checkpoint; the trainer never waits on evaluation and never imports it. The run
directory may be local or in object storage (`s3://...`, read with `eval.storage_options`).

Each checkpoint's export is first copied to `OUT/exports/RUN@STEP/` (training prunes old checkpoints, and an
evaluation must not read a folder that is being deleted); the results go to `OUT` with the baselines of
`eval.checkpoints` beside them (evaluated once: a rerun skips results present).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Set

from medscale.core import runs as ck
from medscale.core.config import to_yaml
from medscale.core.errors import ConfigError
from medscale.core.lifeline import die_with_parent
from medscale.core.storage import join
from medscale.eval.config import EvalConfig
from medscale.eval.remote import EXPORTS, base_name, complete_checkpoints, fetch_export, is_remote, read_events

logger = logging.getLogger(__name__)
WATCH_LOG = "watch.jsonl"  # one line per evaluation: run, checkpoint, step, start, end (epoch seconds), exit code
NICENESS = 10  # evaluation yields the CPU to training on a shared machine


TERMINAL = ("done", "stop_at_step", "preempted", "non_finite_loss")  # the run stopped (it may resume later)


def finished(run_dir: str, storage_options: Optional[Mapping[str, Any]] = None) -> bool:
    """True when the run's latest start (or resume) was followed by a stop: done, a time box, a preemption or a
    non-finite loss; a stop left in the log by an earlier attempt does not count."""
    events = [e.get("event") for e in read_events(run_dir, storage_options)]
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


def _keep(checkpoint: str, exports: Path, run: str, storage_options: Mapping[str, Any]) -> Optional[Path]:
    """Copy a checkpoint's export out of the run (training prunes old checkpoints); None if it was pruned first."""
    target = exports / f"{run}@{ck.step_of(Path(checkpoint))}"
    try:
        return fetch_export(join(checkpoint, ck.EXPORT), storage_options, target)
    except OSError:  # pruned by training while (or before) we copied it
        logger.warning("%s was pruned before it could be evaluated", checkpoint)
        return None


def _records(out: Path) -> List[dict]:
    log = out / WATCH_LOG
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _evaluated(out: Path, run: str) -> Set[str]:
    """The checkpoints of `run` an earlier watcher into `out` evaluated with success (a restarted watcher goes on)."""
    return {e["checkpoint"] for e in _records(out) if e.get("run", run) == run and not e.get("exit_code")}


def busy_intervals(out: Path) -> List[tuple]:
    """(start, end) epoch seconds of each evaluation `watch` ran into `out`."""
    return [(e["start"], e["end"]) for e in _records(Path(out))]


def watch(run_dir: str, cfg: EvalConfig, once: bool = False, interval: float = 30.0,
          after_each: Optional[Callable[[], None]] = None) -> int:
    """Evaluate new complete checkpoints of `run_dir` until the run is done (or once, with `once`); returns the
    exit code (1 when an evaluation failed). `after_each` runs after each evaluation (publishing the results)."""
    if not cfg.out:
        raise ConfigError("eval watch needs --out DIR (or eval.out)")
    options = cfg.storage_options
    if not is_remote(run_dir, options) and not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")  # (one in object storage may not be written yet)
    exports = Path(cfg.out) / EXPORTS
    exports.mkdir(parents=True, exist_ok=True)
    run = base_name(run_dir)
    code, seen = 0, _evaluated(Path(cfg.out), run)
    while True:
        done = finished(run_dir, options)  # read before listing: a checkpoint written after this is seen next time
        new = [c for c in complete_checkpoints(run_dir, options) if base_name(c) not in seen]
        kept = [(c, _keep(c, exports, run, options)) for c in new]  # all copied first
        for checkpoint, target in kept:
            seen.add(base_name(checkpoint))
            if target is None:
                continue
            step = ck.step_of(Path(checkpoint))
            logger.info("evaluating %s (step %d)", checkpoint, step)
            started = time.time()
            child = _evaluate_in_child(target, cfg)
            with open(Path(cfg.out) / WATCH_LOG, "a") as fh:
                fh.write(json.dumps({"run": run, "checkpoint": base_name(checkpoint), "step": step,
                                     "start": started, "end": time.time(), "exit_code": child}) + "\n")
            code |= 1 if child else 0
            if after_each is not None:
                after_each()
        if once or (done and not new):
            return code
        time.sleep(interval)
