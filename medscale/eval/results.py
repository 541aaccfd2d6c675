"""The results contract (one place): `OUT/results.parquet/`, a folder of append-only Parquet parts, one per finished
job, each committed atomically (written under a dot name, then renamed); one row per (checkpoint, task, dataset,
metric). Readers take the folder as one table (`pyarrow.parquet.read_table(OUT/results.parquet)`, pandas, DuckDB's
`read_parquet('OUT/results.parquet/*.parquet')`). Any number of evaluations may write to one OUT at once (two
`medscale eval` runs, a watcher's child that outlives its watcher): none rewrites another's rows, so no row of a run
that finished is lost. The same figures go to TensorBoard at the checkpoint's step (`OUT/tb/NAME/`, a file per
writer) and into a markdown table with the baselines beside the model (`OUT/results.md`, rewritten from every part
when a run ends). A results file of earlier versions (one Parquet file) becomes the folder's first part.

A rerun skips a job whose rows are present, keyed by (checkpoint digest, task, dataset digest, parameters).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from medscale.core.storage import mkstemp_shared

RESULTS, TABLE, TB = "results.parquet", "results.md", "tb"
SCHEMA = pa.schema([
    ("checkpoint", pa.string()),  # the name tables use (run@step, export folder, random MODEL, raw pixels)
    ("checkpoint_spec", pa.string()),  # as given on the command line
    ("checkpoint_digest", pa.string()),  # weights + card (export), model (random), "raw"
    ("kind", pa.string()),  # export | random | raw
    ("step", pa.int64()),
    ("task", pa.string()),
    ("dataset", pa.string()),
    ("dataset_digest", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("low", pa.float64()),  # 95% bootstrap interval (nan where none)
    ("high", pa.float64()),
    ("n", pa.int64()),  # test examples
    ("seconds", pa.float64()),  # the job's wall time
    ("commit", pa.string()),
    ("parameters", pa.string()),  # the task's options, JSON
    ("time", pa.string()),
])
Key = Tuple[str, str, str, str]


def job_key(checkpoint_digest: str, task: str, dataset_digest: str, parameters: str) -> Key:
    """What identifies a result across reruns."""
    return checkpoint_digest, task, dataset_digest, parameters


def read_results(out: Path) -> List[Dict[str, Any]]:
    """Every row of every part under `OUT/results.parquet`, oldest part first (none when there is none)."""
    folder = Path(out) / RESULTS
    parts = [folder] if folder.is_file() else sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    rows: List[Dict[str, Any]] = []
    for part in parts:
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def _upgrade(out: Path) -> None:
    """An earlier version's single results file becomes the first part of the folder (once; concurrent callers
    agree: the rename is atomic and the loser finds the folder)."""
    path = out / RESULTS
    if not path.is_file():
        return
    moved = out / f".results-legacy-{os.getpid()}.parquet"
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return
    path.mkdir(exist_ok=True)
    os.replace(moved, path / f"part-{0:020d}-legacy.parquet")


def write_part(out: Path, rows: Sequence[Dict[str, Any]]) -> Path:
    """Commit `rows` as a new part (temp name, then rename): visible whole or not at all, never overwritten."""
    folder = out / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA.names} for r in rows], schema=SCHEMA)
    fd, tmp = mkstemp_shared(str(folder), prefix=".part-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        name = folder / f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        os.replace(tmp, name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return name


class ResultStore:
    """The results of one output folder: read at start, a part appended per finished job."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        _upgrade(self.out)
        self.rows: List[Dict[str, Any]] = read_results(self.out)
        self._writers: Dict[str, Any] = {}

    def done(self, commit: Optional[str] = None) -> set:
        """Keys of the jobs whose results are present (of results tagged `commit`, when given)."""
        return {job_key(r["checkpoint_digest"], r["task"], r["dataset_digest"], r["parameters"]) for r in self.rows
                if commit is None or r["commit"] == commit}

    def add(self, rows: Sequence[Dict[str, Any]]) -> None:
        """Commit a job's rows as a part of their own; TensorBoard gets the scalars."""
        if rows:
            write_part(self.out, rows)
        self.rows.extend(rows)
        for row in rows:
            self._scalar(row)

    def _scalar(self, row: Dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        name = slug(row["checkpoint"])
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = SummaryWriter(str(self.out / TB / name))
        writer.add_scalar(f"{row['dataset']}/{row['task']}/{row['metric']}", row["value"], row["step"] or 0)

    def close(self) -> None:
        """Flush TensorBoard."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _cell(row: Dict[str, Any]) -> str:
    value, low, high = row["value"], row["low"], row["high"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if low is None or math.isnan(low):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(rows: Iterable[Dict[str, Any]]) -> str:
    """Rows (dataset, task, metric) x columns (checkpoints: the models, then random initialisation, then raw
    pixels), each cell `value [95% interval]`; the newest row of a repeated result wins."""
    rows = list(rows)
    if not rows:
        return "(no results)"
    order = {"export": 0, "random": 1, "raw": 2}
    columns = sorted({(order.get(r["kind"], 3), r["step"] or 0, r["checkpoint"]) for r in rows})
    names = [c[2] for c in columns]
    cells: Dict[Tuple[str, str, str], Dict[str, str]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["task"], r["metric"]), {})[r["checkpoint"]] = _cell(r)
    lines = ["| dataset | task | metric | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (dataset, task, metric), by_name in sorted(cells.items()):
        lines.append(f"| {dataset} | {task} | {metric} | " + " | ".join(by_name.get(n, "") for n in names) + " |")
    return "\n".join(lines)


def slug(name: str) -> str:
    """`name` as a file name: letters, digits and `-_.@`; anything else becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def parameters_json(parameters: Dict[str, Any]) -> str:
    """A task's parameters as canonical JSON (the rerun key compares these strings)."""
    return json.dumps(parameters, sort_keys=True, default=str)
