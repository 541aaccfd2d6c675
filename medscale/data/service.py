"""The sharding service: plan, run work units as Ray tasks, commit their shards and manifest parts; resumable."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Dict, List

from tqdm import tqdm

from medscale.core.config import ShardConfig, source_options
from medscale.core.errors import ConfigError
from medscale.core.executor import create_executor
from medscale.core.storage import check_writable, filesystem, full_url, is_local, join, move
from medscale.data.ingest import STAGING_DIR, UnitResult, process_unit, quarantine_row
from medscale.data.manifest import committed_state, write_part
from medscale.data.plan import WorkUnit, expand_inputs, plan_units, scan_batch
from medscale.data.shards import idx_name, shard_name

logger = logging.getLogger(__name__)
SCAN_BATCH = 256


@dataclass
class ShardSummary:
    """What one run did (this run's work; `total_*` include earlier committed runs)."""

    output: str
    inputs: int = 0
    skipped_inputs: int = 0  # already committed by an earlier run
    volumes: int = 0
    slices: int = 0
    shards: int = 0
    bytes: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    total_samples: int = 0
    total_shards: int = 0

    def format(self) -> str:
        """A few human lines for the end of a run."""
        return (f"medscale shard -> {self.output}\n"
                f"  inputs {self.inputs} (already done: {self.skipped_inputs}), volumes {self.volumes}, "
                f"slices {self.slices}, shards {self.shards}, {self.bytes / 1e6:.1f} MB, "
                f"quarantined {self.quarantined}\n"
                f"  {self.seconds:.1f} s, {self.images_per_s:.0f} images/s; corpus now {self.total_samples} samples "
                f"in {self.total_shards} shards")

    def as_dict(self) -> Dict:
        """JSON-ready."""
        return asdict(self)


class ShardCommitter:
    """Moves staged shards to their final names and writes the manifest part that commits them (driver side)."""

    def __init__(self, fs, root: str, prefix: str, next_shard: int, next_part: int) -> None:
        self.fs, self.root, self.prefix = fs, root, prefix
        self.next_shard, self.next_part = next_shard, next_part

    def commit(self, rows: List[Dict], staged: List[str]) -> List[str]:
        """Final shard names for `staged`, in order; rows' staged shard numbers become those names."""
        names = []
        for path in staged:
            name = shard_name(self.prefix, self.next_shard)
            self.next_shard += 1
            move(self.fs, path[:-4] + ".idx", join(self.root, idx_name(name)))
            move(self.fs, path, join(self.root, name))
            names.append(name)
        for row in rows:
            if isinstance(row.get("shard"), int):
                row["shard"] = names[row["shard"]]
        if rows:
            write_part(self.fs, self.root, self.next_part, rows)  # the commit point
            self.next_part += 1
        return names


    def drop_staging(self, unit_id: str) -> None:
        """Remove a committed unit's (now empty) staging folder; object stores have no folders to remove."""
        path = join(self.root, STAGING_DIR, unit_id)
        if is_local(self.fs) and self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def clean_orphans(fs, root: str, prefix: str, committed: set) -> int:
    """Remove staged leftovers and shards that no manifest part names (a run killed mid-commit)."""
    removed = 0
    staging = join(root, STAGING_DIR)
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    for path in fs.glob(join(root, f"{prefix}-*.tar")) + fs.glob(join(root, f"{prefix}-*.idx")):
        name = path.rsplit("/", 1)[-1]
        if name[:-4] + ".tar" not in committed:
            fs.rm_file(path)
            removed += 1
    return removed


def run_sharding(cfg: ShardConfig) -> ShardSummary:
    """Shard `cfg.inputs` into `cfg.output`: resumes a killed run, skips committed inputs, extends the manifest."""
    if not cfg.output:
        raise ConfigError("shard.output is not set: pass --output URL (a folder or s3://bucket/prefix).")
    if not cfg.inputs:
        raise ConfigError("no inputs: pass files, folders or URLs to `medscale shard`, or set shard.inputs.")
    start = time.perf_counter()
    fs, root = filesystem(cfg.output, cfg.storage_options)
    check_writable(fs, root, cfg.output)
    state = committed_state(fs, root, cfg.prefix)
    orphans = clean_orphans(fs, root, cfg.prefix, state.shards)
    if orphans:
        logger.info("removed %d uncommitted shard files left by an interrupted run", orphans)
    summary = ShardSummary(output=full_url(fs, root))

    files = expand_inputs(cfg.inputs, cfg.storage_options)
    todo = [f for f in files if f.url not in state.done_paths]
    summary.inputs, summary.skipped_inputs = len(todo), len(files) - len(todo)
    committer = ShardCommitter(fs, root, cfg.prefix, state.next_shard, state.parts)
    executor = create_executor(cfg.executor, cfg.ray_address, cfg.num_cpus)
    try:
        scans = []
        batches = [todo[i:i + SCAN_BATCH] for i in range(0, len(todo), SCAN_BATCH)]
        bar = tqdm(total=len(todo), desc="scan", unit="file", disable=not cfg.progress or not todo)
        for batch, result, error in executor.imap_unordered(scan_batch, batches, cfg.storage_options):
            if error is not None:
                raise error
            scans.extend(result)
            bar.update(len(batch))
        bar.close()
        scans.sort(key=lambda r: r.file.url)
        rejected = [quarantine_row(r.file.source, r.kind, r.file.url, r.error, None) for r in scans if r.error]
        if rejected:
            committer.commit(rejected, [])
            summary.quarantined += len(rejected)
        units = plan_units(
            scans, cfg.shard_size, cfg.files_per_unit, state.done_units,
            labels_from_folders={f.source: source_options(cfg, f.source).labels_from_folders for f in files},
            stride={f.source: source_options(cfg, f.source).slice_stride for f in files})
        _run_units(executor, units, cfg, committer, summary)
    finally:
        executor.close()
    if is_local(fs) and fs.exists(join(root, STAGING_DIR)) and not fs.ls(join(root, STAGING_DIR)):
        fs.rm(join(root, STAGING_DIR), recursive=True)
    summary.seconds = time.perf_counter() - start
    summary.images_per_s = summary.slices / summary.seconds if summary.seconds else 0.0
    summary.total_samples = state.samples + summary.slices
    summary.total_shards = committer.next_shard
    return summary


def _run_units(executor, units: List[WorkUnit], cfg: ShardConfig, committer: ShardCommitter,
               summary: ShardSummary) -> None:
    bar = tqdm(total=sum(u.est_samples for u in units), desc="shard", unit="img",
               disable=not cfg.progress or not units)
    output_url = summary.output
    for unit, result, error in executor.imap_unordered(process_unit, units, cfg, output_url,
                                                       max_in_flight=cfg.max_in_flight):
        if error is not None:  # the task died (after Ray's retries): quarantine its inputs, keep going
            logger.error("unit %s failed: %s", unit.unit_id, error)
            reason = f"worker failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            result = UnitResult(unit.unit_id, rows=[quarantine_row(source, None, url, reason, unit.unit_id)
                                                    for source, url in unit.inputs()])
            result.quarantined = len(result.rows)
        names = committer.commit(result.rows, result.staged)
        committer.drop_staging(unit.unit_id)
        summary.volumes += result.volumes
        summary.slices += result.samples
        summary.quarantined += result.quarantined
        summary.bytes += result.bytes
        summary.shards += len(names)
        bar.update(unit.est_samples)
    bar.close()
