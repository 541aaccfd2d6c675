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
from medscale.eval.config import EvalConfig
from medscale.trainer import checkpoint as ck

logger = logging.getLogger(__name__)
EXPORTS = "exports"
NICENESS = 10  # evaluation yields the CPU to training on a shared machine


def finished(run_dir: Path) -> bool:
    """True when the run's log says it reached the end of its schedule."""
    log = run_dir / ck.LOG
    if not log.exists():
        return False
    return any(json.loads(line).get("event") == "done" for line in log.read_text().splitlines() if line.strip())


def _evaluate_in_child(export: Path, cfg: EvalConfig) -> int:
    """`medscale eval` of one export (and the baselines) in a child process at lower priority."""
    config = Path(cfg.out) / ".watch-config.yaml"
    config.write_text(to_yaml({"eval": cfg}, redact=False))
    os.chmod(config, 0o600)  # may hold storage credentials
    command = [sys.executable, "-m", "medscale", "eval", "-c", str(config), "--checkpoints", str(export),
               *cfg.checkpoints]
    return subprocess.run(command, preexec_fn=lambda: os.nice(NICENESS)).returncode


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
        for checkpoint in new:
            seen.add(checkpoint.name)
            target = exports / f"{run.name}@{ck.step_of(checkpoint)}"
            if not target.exists():
                try:
                    shutil.copytree(checkpoint / ck.EXPORT, target.with_name(target.name + ".tmp"),
                                    dirs_exist_ok=True)
                except FileNotFoundError:  # pruned by training before we got to it
                    logger.warning("%s was pruned before it could be evaluated", checkpoint)
                    continue
                target.with_name(target.name + ".tmp").rename(target)
            logger.info("evaluating %s (step %d)", checkpoint, ck.step_of(checkpoint))
            code |= 1 if _evaluate_in_child(target, cfg) else 0
        if once or (done and not new):
            return code
        time.sleep(interval)
