"""Apply dedup decisions by writing new shards that hold only the kept samples (members copied, not re-encoded).

Each old shard is one Ray task; the driver commits the new shards and manifest parts with the sharding service's
protocol, so a killed run resumes where it stopped. The new manifest keeps every row of the old one: kept samples
point into the new shards, the others (duplicate, excluded, quarantined) keep their decision with no shard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

import pyarrow.compute as pc

from medscale.core.digest import digest
from medscale.core.errors import FaultError, InputError, ShardFormatError
from medscale.core.executor import executor_for, fan_out
from medscale.core.faults import describe, fault_kind, stopped, traceback_text
from medscale.core.lease import Lease
from medscale.core.storage import check_writable, filesystem, full_url, join
from medscale.core.summary import Summary
from medscale.data.commit import StagedShards, close_output, open_output
from medscale.data.manifest import KEPT, read_manifest
from medscale.data.shards import iter_shard
from medscale.dedup.config import DedupConfig

COPY_COST_S = 2e-5  # CPU-seconds per sample copied, for `executor: auto`


@dataclass
class CompactSummary(Summary):
    """What a compaction wrote."""

    output: str
    kept: int = 0
    dropped: int = 0
    shards: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        """One human line."""
        return (f"medscale dedup --write-kept -> {self.output}: {self.kept} kept samples in {self.shards} shards "
                f"({self.dropped} rows without a shard), {self.seconds:.1f} s")


def copy_kept(task: Tuple[str, str, List[str]], source_url: str, output_url: str,
              storage_options: Mapping[str, Any], shard_size: int) -> Tuple[List[str], List[Tuple[str, int]]]:
    """(staged tar paths, [(key, staged shard index)]) for the `keep` keys of one old shard (a Ray task)."""
    unit_id, shard, keep = task
    wanted = set(keep)
    src_fs, src_root = filesystem(source_url, storage_options)
    placed: List[Tuple[str, int]] = []
    with StagedShards(output_url, storage_options, unit_id, shard_size, 1 << 62) as writer, \
            src_fs.open(join(src_root, shard), "rb") as fh:
        for key, members in iter_shard(fh, shard):
            if key in wanted:
                placed.append((key, writer.write(key, members)))
    return writer.staged, placed


def write_kept(url: str, output: str, cfg: DedupConfig, shard_size: int = 1000, prefix: str = "shard",
               force: bool = False) -> CompactSummary:
    """New shards under `output` with only the rows of `url` whose status is kept; resumable; holds the
    output's writer lock (`force` breaks another run's)."""
    src_fs, src_root = filesystem(url, cfg.storage_options)
    fs, root = filesystem(output, cfg.storage_options)
    if full_url(fs, root) == full_url(src_fs, src_root):
        raise InputError(f"--write-kept {output}: the output must differ from the input {url}")
    check_writable(fs, root, output)
    with Lease(fs, root, "medscale dedup --write-kept", force=force) as lock:
        return _write_kept(url, output, cfg, shard_size, prefix, lock)


def _write_kept(url: str, output: str, cfg: DedupConfig, shard_size: int, prefix: str, lock: Lease
                ) -> CompactSummary:
    start = time.perf_counter()
    src_fs, src_root = filesystem(url, cfg.storage_options)
    table = read_manifest(src_fs, src_root)
    if not len(table):
        raise InputError(f"{url}: no manifest with samples; run `medscale shard` into this URL first")
    fs, root = filesystem(output, cfg.storage_options)
    state, committer = open_output(fs, root, prefix, lock)
    rows = table.to_pylist()
    by_shard: Dict[str, List[dict]] = {}
    loose: List[dict] = []
    for row in rows:
        (by_shard.setdefault(row["shard"], []) if row["shard"] else loose).append(row)
    tasks = [("c" + digest(url, shard, n=16), shard, [r["key"] for r in members if r["status"] == KEPT])
             for shard, members in sorted(by_shard.items())]
    tasks = [t for t in tasks if t[0] not in state.done_units]
    summary = CompactSummary(output=full_url(fs, root))
    executor = executor_for(cfg.executor, len(table) * COPY_COST_S, cfg.ray_address, cfg.num_cpus)
    try:
        for task, result, error in fan_out(executor, copy_kept, tasks, full_url(src_fs, src_root), summary.output,
                                           cfg.storage_options, shard_size, desc="compact", unit="shard",
                                           progress=cfg.progress):
            if error is not None:
                raise FaultError(stopped(f"copying {task[1]}", fault_kind(error), describe(error),
                                         traceback_text(error))) from None
            unit_id, shard, _ = task
            staged, placed = result
            index = dict(placed)
            new_rows = []
            for row in by_shard[shard]:
                row = dict(row, unit=unit_id)
                if row["status"] == KEPT and row["key"] not in index:
                    raise ShardFormatError(f"{url}/{shard}: sample {row['key']} is in the manifest but not in the "
                                           "shard; the output is damaged, reshard its inputs")
                row["shard"] = index.get(row["key"]) if row["status"] == KEPT else None
                new_rows.append(row)
            summary.shards += len(committer.commit(new_rows, staged))
            committer.drop_staging(unit_id)
        meta = "c" + digest(url, "rows-without-shards", n=16)
        if loose and meta not in state.done_units:
            committer.commit([dict(r, unit=meta) for r in loose], [])
    finally:
        executor.close()
    close_output(fs, root)
    kept = int(pc.sum(pc.equal(table["status"], KEPT)).as_py() or 0)
    summary.kept, summary.dropped = kept, len(table) - kept
    summary.seconds = time.perf_counter() - start
    return summary
