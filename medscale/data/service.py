"""The sharding service: plan, run work units as Ray tasks, commit their shards and manifest parts; resumable."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from medscale.core.errors import ConfigError
from medscale.core.executor import create_executor, fan_out
from medscale.core.storage import check_writable, filesystem, full_url
from medscale.core.summary import Summary
from medscale.data.commit import ShardCommitter, close_output, open_output
from medscale.data.config import ShardConfig
from medscale.data.ingest import SliceReducer, UnitResult, process_unit, quarantine_row
from medscale.data.plan import WorkUnit, expand_inputs, plan_units, scan_batch
from medscale.data.sources import SCAN_BATCH

logger = logging.getLogger(__name__)


@dataclass
class ShardSummary(Summary):
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


def run_sharding(cfg: ShardConfig, make_reducer: Optional[Callable[[], SliceReducer]] = None) -> ShardSummary:
    """Shard `cfg.inputs` into `cfg.output`: resumes a killed run, skips committed inputs, extends the manifest.
    `cfg.reduce` needs `make_reducer`, a factory of per-volume reducers (the command line hands dedup's)."""
    if not cfg.output:
        raise ConfigError("shard.output is not set: pass --output URL (a folder or s3://bucket/prefix).")
    if not cfg.inputs:
        raise ConfigError("no inputs: pass files, folders or URLs to `medscale shard`, or set shard.inputs.")
    if cfg.reduce and make_reducer is None:
        raise ConfigError(f"shard.reduce={cfg.reduce} needs its reducer: run `medscale shard`, or pass "
                          "make_reducer=medscale.dedup.volume.slice_reducer(...) to run_sharding.")
    start = time.perf_counter()
    fs, root = filesystem(cfg.output, cfg.storage_options)
    check_writable(fs, root, cfg.output)
    state, committer = open_output(fs, root, cfg.prefix)
    summary = ShardSummary(output=full_url(fs, root))

    files = expand_inputs(cfg.inputs, cfg.storage_options)
    todo = [f for f in files if f.url not in state.done_paths]
    summary.inputs, summary.skipped_inputs = len(todo), len(files) - len(todo)
    executor = create_executor(cfg.executor, cfg.ray_address, cfg.num_cpus)
    try:
        scans = []
        batches = [todo[i:i + SCAN_BATCH] for i in range(0, len(todo), SCAN_BATCH)]
        for _, result, error in fan_out(executor, scan_batch, batches, cfg.storage_options, desc="scan", unit="file",
                                        weight=len, progress=cfg.progress):
            if error is not None:
                raise error
            scans.extend(result)
        scans.sort(key=lambda r: r.file.url)
        rejected = [quarantine_row(r.file.source, r.kind, r.file.url, r.error, None) for r in scans if r.error]
        if rejected:
            committer.commit(rejected, [])
            summary.quarantined += len(rejected)
        units = plan_units(
            scans, cfg.shard_size, cfg.files_per_unit, state.done_units,
            labels_from_folders={f.source: cfg.source_options(f.source).labels_from_folders for f in files},
            stride={f.source: cfg.source_options(f.source).slice_stride for f in files})
        _run_units(executor, units, cfg, make_reducer, committer, summary)
    finally:
        executor.close()
    close_output(fs, root)
    summary.seconds = time.perf_counter() - start
    summary.images_per_s = summary.slices / summary.seconds if summary.seconds else 0.0
    summary.total_samples = state.samples + summary.slices
    summary.total_shards = committer.next_shard
    return summary


def _run_units(executor, units: List[WorkUnit], cfg: ShardConfig, make_reducer: Optional[Callable],
               committer: ShardCommitter, summary: ShardSummary) -> None:
    for unit, result, error in fan_out(executor, process_unit, units, cfg, summary.output, make_reducer,
                                       desc="shard", unit="img", weight=lambda u: u.est_samples,
                                       progress=cfg.progress, max_in_flight=cfg.max_in_flight):
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
