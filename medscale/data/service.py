"""The sharding service: plan, run work units as Ray tasks, commit their shards and manifest parts; resumable."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from tqdm import tqdm

from medscale.core.errors import ConfigError, FaultError, InputError
from medscale.core.executor import choose_executor, create_executor, fan_out, per_node, task_resources
from medscale.core.faults import describe, fault_kind, stopped, traceback_text
from medscale.core.lease import Lease
from medscale.core.storage import check_writable, filesystem, full_url
from medscale.core.summary import Summary
from medscale.data.commit import ShardCommitter, close_output, open_output
from medscale.data.config import ShardConfig
from medscale.data.ingest import SliceReducer, UnitFailure, quarantine_row, run_unit
from medscale.data.manifest import CommittedState
from medscale.data.plan import InputFile, WorkUnit, expand_inputs, plan_units, scan_batch
from medscale.data.sources import SCAN_BATCH

logger = logging.getLogger(__name__)
# measured (benchmarks/shard.py, mixed real corpus, 2 cores): per-slice work of a unit, per-file work of the scan
SAMPLE_COST_S = 4e-4
SCAN_COST_S = 3e-4
WORKER_MODULES = ("medscale.data.ingest",)  # what a pool's workers import once (forkserver preload)


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
    nodes: Dict[str, int] = field(default_factory=dict)  # Ray node id -> tasks it ran (a Ray executor only)

    def format(self) -> str:
        """A few human lines for the end of a run."""
        return (f"medscale shard -> {self.output}\n"
                f"  inputs {self.inputs} (already done: {self.skipped_inputs}), volumes {self.volumes}, "
                f"slices {self.slices}, shards {self.shards}, {self.bytes / 1e6:.1f} MB, "
                f"quarantined {self.quarantined}\n"
                f"  {self.seconds:.1f} s, {self.images_per_s:.0f} images/s; corpus now {self.total_samples} samples "
                f"in {self.total_shards} shards" + (f"\n  {per_node(self.nodes)}" if per_node(self.nodes) else ""))


def run_sharding(cfg: ShardConfig, make_reducer: Optional[Callable[[], SliceReducer]] = None,
                 force: bool = False) -> ShardSummary:
    """Shard `cfg.inputs` into `cfg.output`: resumes a killed run, skips committed inputs, extends the manifest.
    `cfg.reduce` needs `make_reducer`, a factory of per-volume reducers (the command line hands dedup's). One
    writer per output: `force` breaks another run's lock. A storage fault stops the run with a FaultError."""
    if not cfg.output:
        raise ConfigError("shard.output is not set: pass --output URL (a folder or s3://bucket/prefix).")
    if not cfg.inputs:
        raise ConfigError("no inputs: pass files, folders or URLs to `medscale shard`, or set shard.inputs.")
    if cfg.reduce and make_reducer is None:
        raise ConfigError(f"shard.reduce={cfg.reduce} needs its reducer: run `medscale shard`, or pass "
                          "make_reducer=medscale.dedup.volume.slice_reducer(...) to run_sharding.")
    start = time.perf_counter()
    files = expand_inputs(cfg.inputs, cfg.storage_options)
    if not files:
        raise InputError(f"no input files found in {', '.join(cfg.inputs)} (empty folders, or only hidden files); "
                         "check the paths")
    fs, root = filesystem(cfg.output, cfg.storage_options)
    check_writable(fs, root, cfg.output)
    with Lease(fs, root, "medscale shard", force=force) as lock:
        state, committer = open_output(fs, root, cfg.prefix, lock)
        summary = ShardSummary(output=full_url(fs, root))
        todo = [f for f in files if f.url not in state.done_paths]
        summary.inputs, summary.skipped_inputs = len(todo), len(files) - len(todo)
        if todo:  # a rerun with nothing to do starts no workers
            _shard_files(todo, files, cfg, make_reducer, state, committer, summary)
        close_output(fs, root)
    summary.seconds = time.perf_counter() - start
    summary.images_per_s = summary.slices / summary.seconds if summary.seconds else 0.0
    summary.total_samples = state.samples + summary.slices
    summary.total_shards = committer.next_shard
    return summary


def _shard_files(todo: List[InputFile], files: List[InputFile], cfg: ShardConfig, make_reducer: Optional[Callable],
                 state: CommittedState, committer: ShardCommitter, summary: ShardSummary) -> None:
    """Scan `todo`, commit the rejected files, plan units and run them (each phase on the executor its size
    calls for: `executor: auto`)."""
    executor, kind = None, None
    try:
        scan_kind = choose_executor(cfg.executor, cfg.ray_address, len(todo) * SCAN_COST_S, cfg.num_cpus)
        executor, kind = create_executor(scan_kind, cfg.ray_address, cfg.num_cpus, WORKER_MODULES,
                                                  task_resources(cfg.task_memory_mb)), scan_kind
        scans = []
        batches = [todo[i:i + SCAN_BATCH] for i in range(0, len(todo), SCAN_BATCH)]
        for batch, result, error in fan_out(executor, scan_batch, batches, cfg.storage_options, cfg.retries,
                                            desc="scan", unit="file", weight=len, progress=cfg.progress):
            if error is not None:
                raise FaultError(stopped(f"scanning {batch[0].url}", fault_kind(error), describe(error),
                                         traceback_text(error), cfg.retries + 1)) from None
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
        work = sum(u.est_samples for u in units) * SAMPLE_COST_S
        unit_kind = choose_executor(cfg.executor, cfg.ray_address, work, cfg.num_cpus)
        logger.info("%d units, about %.0f CPU-s of work: executor %s", len(units), work, unit_kind)
        if units and unit_kind != kind:
            _count_nodes(summary.nodes, executor)
            executor.close()
            executor, kind = create_executor(unit_kind, cfg.ray_address, cfg.num_cpus, WORKER_MODULES,
                                                      task_resources(cfg.task_memory_mb)), unit_kind
        _run_units(executor, units, cfg, make_reducer, committer, summary)
    finally:
        if executor is not None:
            _count_nodes(summary.nodes, executor)
            executor.close()


def _count_nodes(into: Dict[str, int], executor) -> None:
    for node, tasks in executor.tasks_per_node.items():
        into[node] = into.get(node, 0) + tasks


def _describe_unit(unit: WorkUnit) -> str:
    inputs = unit.inputs()
    return f"unit {unit.unit_id} ({len(inputs)} inputs, e.g. {inputs[0][1]})"


def _run_units(executor, units: List[WorkUnit], cfg: ShardConfig, make_reducer: Optional[Callable],
               committer: ShardCommitter, summary: ShardSummary) -> None:
    # the bar counts the slices written (a volume's slice count is an estimate until it is read): its total is
    # what is written so far plus the estimate of the units still running
    with tqdm(total=sum(u.est_samples for u in units), desc="shard", unit="slice",
              disable=not cfg.progress or not units) as bar:
        for unit, result, error in fan_out(executor, run_unit, units, cfg, summary.output, make_reducer,
                                           progress=False, max_in_flight=cfg.max_in_flight):
            if error is not None:  # the worker itself died (after Ray's retries) or the pool broke
                raise FaultError(stopped(_describe_unit(unit), fault_kind(error) or "fatal", describe(error),
                                         traceback_text(error))) from None
            if isinstance(result, UnitFailure):  # a storage fault after its retries, or an unexpected error
                raise FaultError(stopped(_describe_unit(unit), result.kind, result.message, result.details,
                                         result.attempts))
            names = committer.commit(result.rows, result.staged)
            committer.drop_staging(unit.unit_id)
            summary.volumes += result.volumes
            summary.slices += result.samples
            summary.quarantined += result.quarantined
            summary.bytes += result.bytes
            summary.shards += len(names)
            bar.total += result.samples - unit.est_samples
            bar.update(result.samples)
