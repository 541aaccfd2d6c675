"""The exit-code contract of every launch path: 0 done, 75 preempted (resumable), anything else a failure.

"Preempted" is read from the run directory's `preempted.json` (written by rank 0 after every rank saved), not from
a launcher's exit code: torchrun turns a worker's 75 into 1, and a signalled launcher has its own codes.

    medscale launch -c RUN.yaml [KEY=VALUE ...] --outcome CODE --since EPOCH_S     # the SLURM script's last step
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from medscale.core.runs import LOG
from medscale.core.runs import PREEMPTED as PREEMPTED_FILE
from medscale.core.runs import PREEMPTED_EXIT as PREEMPTED
from medscale.core.storage import filesystem, join

DONE = 0
CLOCK_SKEW_S = 5.0  # rank 0 may write the record on another machine


def contract_code(code: int, record: Optional[Dict[str, Any]], since: float, done: bool = False) -> int:
    """The launch's exit code from its launcher's `code` and the run directory's preemption record: 0 when the
    launcher succeeded, or when the run logged its end since the launch started (`done`: a signal that reached the
    launcher after the last step is no failure); 75 when a record was written since the launch started (`since`,
    epoch seconds); else the failure (a signal's death as 128 + its number; a 75 with no record is a failure:
    nothing says it saved)."""
    if code == DONE or done:
        return DONE
    if record is not None and float(record.get("epoch_s", 0)) >= since - CLOCK_SKEW_S:
        return PREEMPTED
    if code < 0:
        return 128 - code
    return 1 if code == PREEMPTED else code


def preemption_record(run_dir: str, storage_options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The run directory's `preempted.json` (local or object storage), or None."""
    fs, root = filesystem(run_dir, storage_options)
    try:
        record = json.loads(fs.cat_file(join(root, PREEMPTED_FILE)))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def finished_since(run_dir: str, storage_options: Dict[str, Any], since: float) -> bool:
    """True when the run's log holds a `done` event written since `since` (the schedule's end)."""
    fs, root = filesystem(run_dir, storage_options)
    try:
        lines = fs.cat_file(join(root, LOG)).decode(errors="replace").splitlines()
    except FileNotFoundError:
        return False
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "done":
            return float(event.get("time", 0)) >= since - CLOCK_SKEW_S
    return False


def verdict(run_dir: Optional[str], storage_options: Dict[str, Any], code: int, since: float) -> int:
    """The contract's code for a finished launch of `run_dir`, said in one line."""
    record = preemption_record(run_dir, storage_options) if run_dir else None
    done = code != DONE and bool(run_dir) and finished_since(run_dir, storage_options, since)
    result = contract_code(code, record, since, done)
    said = {DONE: "done", PREEMPTED: f"preempted at step {(record or {}).get('step')}: rerun the same command to "
                                     "resume (exit code 75)"}
    print(f"medscale launch: {said.get(result, f'failed (exit code {result})')}", flush=True)
    return result
