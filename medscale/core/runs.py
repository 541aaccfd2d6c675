"""The run directory contract (a file contract in one place, like `core/card.py`), torch-free: the trainer writes
it; launchers, evaluation and watchers read it.

```
RUN_DIR/
  config.yaml                 the resolved config (storage options redacted)
  log.jsonl                   one JSON line per logged step (and per checkpoint, preemption, stop)
  tb/                         the TensorBoard run
  images/step-NNNNNNNN.png    the method's picture: reconstructions (MAE), the views trained on (contrastive)
  loss.png                    the loss and lr against the step (drawn when the run stops)
  export/                     the newest exported backbone (core/card.py: card.json + backbone.safetensors)
  preempted.json              written when a signal stopped the run: step, time, epoch_s, checkpoint (launchers)
  checkpoints/step-NNNNNNNN/
    ds/ + latest              DeepSpeed's states (sharded under ZeRO; loaded weights-only: `dsio.py`)
    rng-rank{R}.pt            each rank's RNG states and the method's per-rank state, e.g. SwAV's queue (tensors
                              only: loaded with weights_only=True)
    loader.json               the loader's position (global samples consumed: valid for any world size)
    meta.json                 step, world size, method, model, manifest digest, time, format_version
    export/                   the backbone at this step
    COMPLETE                  written last, by rank 0, after every rank has written its part
```
A checkpoint without COMPLETE is never used; the newest complete one is resumed. `meta.json` carries the run
directory's format version (`core/formats.py`): `read_meta` refuses a newer one in one line.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from medscale.core.formats import FORMAT_KEY, check_format

logger = logging.getLogger(__name__)

CHECKPOINTS, EXPORT, COMPLETE, META, LOADER, DS_TAG = "checkpoints", "export", "COMPLETE", "meta.json", \
    "loader.json", "ds"
PREEMPTED, LOG, TB, IMAGES, CONFIG = "preempted.json", "log.jsonl", "tb", "images", "config.yaml"
LOSS_CURVE = "loss.png"
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: saved after a preemption signal; the same command resumes
RUN_FORMAT = 1  # the run-directory format this medscale writes and reads up to


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """`RUN_DIR/checkpoints/step-NNNNNNNN`."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def step_of(path: Path) -> int:
    """The step a checkpoint folder is named after."""
    return int(path.name.split("-", 1)[1])


def complete_checkpoints(run_dir: str | Path) -> List[Path]:
    """Checkpoint folders with their COMPLETE marker, oldest first; partial ones are skipped with a warning."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in sorted(p for p in root.glob("step-*") if p.is_dir()):
        if (path / COMPLETE).is_file() and (path / META).is_file():
            found.append(path)
        else:
            logger.warning("skipping %s: incomplete (no %s marker; a save was interrupted)", path, COMPLETE)
    return found


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint, or None."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Write JSON atomically (temp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_json(path: Path) -> Dict[str, Any]:
    """A JSON file of the contract."""
    return json.loads(path.read_text())


def write_meta(path: Path, meta: Dict[str, Any]) -> None:
    """Write a checkpoint's `meta.json` (with this medscale's run-directory format version)."""
    write_json(path / META, {**meta, FORMAT_KEY: RUN_FORMAT})


def read_meta(path: Path) -> Dict[str, Any]:
    """The `meta.json` of the checkpoint folder `path` (a FormatError when a newer medscale wrote it)."""
    meta = read_json(path / META)
    check_format(meta.get(FORMAT_KEY), RUN_FORMAT, str(path / META), "run directory")
    return meta


def read_log(run_dir: str | Path) -> List[Dict[str, Any]]:
    """The events of `log.jsonl` (none when it does not exist yet)."""
    log = Path(run_dir) / LOG
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def mark_complete(path: Path, step: int) -> None:
    """The marker written last: the checkpoint may be used from now on."""
    (path / COMPLETE).write_text(f"{step} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Remove all but the newest `keep_last` complete checkpoints (and partial ones older than the newest)."""
    done = complete_checkpoints(run_dir)
    for path in done[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    if done:
        newest = step_of(done[-1])
        for path in (Path(run_dir) / CHECKPOINTS).glob("step-*"):
            if not (path / COMPLETE).exists() and step_of(path) < newest:
                shutil.rmtree(path, ignore_errors=True)
