"""`medscale dedup`: read a sharding output's manifest, decide duplicates with a strategy, record them in the
manifest (shards untouched) and write a report; resumable by construction (a rerun recomputes and rewrites)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medscale.core.card import load_backbone
from medscale.core.errors import InputError
from medscale.core.executor import executor_for
from medscale.core.lease import Lease
from medscale.core.storage import filesystem, full_url
from medscale.core.summary import Summary
from medscale.data.manifest import DUPLICATE, KEPT, read_manifest, update_rows
from medscale.dedup.config import DedupConfig
from medscale.dedup.embed import EMBED_COST_S, embed_corpus, load_embeddings
from medscale.dedup.image_sets import SIGNATURE_COST_S, image_signatures
from medscale.dedup.lsh import parse_verify
from medscale.dedup.report import write_report
from medscale.dedup.strategies import Corpus, strategy_from_config

logger = logging.getLogger(__name__)


@dataclass
class DedupSummary(Summary):
    """What a dedup run decided."""

    DERIVED = ("reduction",)

    output: str
    strategy: str
    samples: int = 0
    kept: int = 0
    duplicates: int = 0
    groups: int = 0  # groups with at least one duplicate
    seconds: float = 0.0
    written: bool = False  # decisions recorded in the manifest (False for a dry run)
    report: Optional[str] = None
    by_source: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def reduction(self) -> float:
        """Fraction of samples removed."""
        return self.duplicates / self.samples if self.samples else 0.0

    def format(self) -> str:
        """A few human lines."""
        lines = [f"medscale dedup {self.strategy} -> {self.output}",
                 f"  {self.samples} samples: kept {self.kept}, duplicates {self.duplicates} "
                 f"({100 * self.reduction:.1f}% removed) in {self.groups} groups, {self.seconds:.1f} s"
                 + ("" if self.written else " (dry run: manifest unchanged)")]
        for row in self.by_source:
            lines.append(f"  {row['source']:<20} {row['modality'] or '-':<6} {row['samples']:>8} -> {row['kept']:>8}"
                         f"  ({100 * row['reduction']:.1f}% removed)")
        if self.report:
            lines.append(f"  report: {self.report}")
        return "\n".join(lines)


def eligible_mask(table: pa.Table) -> np.ndarray:
    """Rows a strategy decides on: samples in shards whose status is kept or duplicate (not excluded or
    quarantined; rows dropped while sharding have no shard)."""
    status = table["status"].to_numpy(zero_copy_only=False)
    has_shard = pc.is_valid(table["shard"]).to_numpy(zero_copy_only=False)
    return has_shard & np.isin(status, [KEPT, DUPLICATE])


def _corpus(table: pa.Table, cfg: DedupConfig, url: str) -> Corpus:
    hashes = table[cfg.hash]
    if hashes.null_count:
        raise InputError(
            f"{url}: {hashes.null_count} of {len(table)} samples have no {cfg.hash} in the manifest (it was written "
            f"before sharding computed hashes); run `medscale dedup {url} --rehash` to compute them from the shards")
    if not pa.types.is_unsigned_integer(hashes.type) and not pa.types.is_integer(hashes.type):
        raise InputError(f"{url}: manifest column {cfg.hash} has type {hashes.type}; expected uint64 hashes")
    slices = table["slice"].to_numpy(zero_copy_only=False)
    verify = parse_verify(cfg.verify)[0] if cfg.verify else ()
    for name in verify:
        if table[name].null_count:
            raise InputError(f"{url}: samples without {name} (needed by dedup.verify); run `medscale dedup {url} "
                             "--rehash`")
    extra = np.stack([table[n].to_numpy(zero_copy_only=False).astype(np.uint64) for n in verify], axis=1) \
        if verify else None
    return Corpus(extra=extra, keys=np.array(table["key"].to_pylist(), dtype=object),
                  hashes=hashes.to_numpy(zero_copy_only=False).astype(np.uint64),
                  volumes=np.array(table["volume"].to_pylist(), dtype=object),
                  slices=np.where(np.isnan(slices.astype(np.float64)), -1, slices).astype(np.int64))


def run_dedup(url: str, cfg: DedupConfig, force: bool = False) -> DedupSummary:
    """Decide duplicates among the samples of the sharding output at `url` with `cfg.strategy`; holds the
    output's writer lock unless a dry run (`force` breaks another run's lock)."""
    fs, root = filesystem(url, cfg.storage_options)
    if cfg.dry_run:
        return _run_dedup(fs, root, url, cfg)
    with Lease(fs, root, "medscale dedup", force=force):
        return _run_dedup(fs, root, url, cfg)


def _run_dedup(fs, root: str, url: str, cfg: DedupConfig) -> DedupSummary:
    start = time.perf_counter()
    full = read_manifest(fs, root)
    if not len(full):
        raise InputError(f"{url}: no manifest with samples (looked for {url}/manifest.parquet); "
                         "run `medscale shard` into this URL first")
    strategy = strategy_from_config(cfg)
    needs = getattr(strategy, "NEEDS", ())
    table = full.filter(pa.array(eligible_mask(full)))
    corpus = _corpus(table, cfg, url)
    if "embeddings" in needs and not (cfg.embeddings or cfg.backbone):
        raise InputError(f"strategy {cfg.strategy!r} needs dedup.embeddings=PATH (Parquet with key, embedding) or "
                         "dedup.backbone=DIR (an exported backbone: card.json + backbone.safetensors)")
    if "embeddings" in needs and cfg.embeddings:
        corpus.embeddings = load_embeddings(cfg.embeddings, corpus.keys, cfg.storage_options)
    work = len(corpus) * (strategy.COST_S + (EMBED_COST_S if "embeddings" in needs and corpus.embeddings is None
                                             else 0) + (SIGNATURE_COST_S if "signatures" in needs else 0))
    executor = executor_for(cfg.executor, work, cfg.ray_address, cfg.num_cpus)
    try:
        if "embeddings" in needs and corpus.embeddings is None:
            load_backbone(cfg.backbone)  # fail early, in the driver, on a wrong folder
            path = embed_corpus(fs, root, sorted(set(table["shard"].to_pylist())), cfg, executor)
            corpus.embeddings = load_embeddings(path, corpus.keys, cfg.storage_options)
        if "signatures" in needs:
            corpus.signatures = image_signatures(fs, root, np.array(table["shard"].to_pylist(), object),
                                                 corpus.keys, cfg.num_perm, executor, cfg.storage_options,
                                                 cfg.progress)
        exemplar, distance = strategy.reduce(corpus, executor)
    finally:
        executor.close()
    is_dup = exemplar != np.arange(len(corpus))
    decisions = pa.table({
        "key": corpus.keys.tolist(),
        "status": np.where(is_dup, DUPLICATE, KEPT).tolist(),
        "duplicate_of": [corpus.keys[e] if d else None for e, d in zip(exemplar, is_dup)],
        "dedup_strategy": [strategy.describe()] * len(corpus),
        "dedup_distance": distance.astype(np.float32),
    })
    summary = DedupSummary(output=full_url(fs, root), strategy=strategy.describe(), samples=len(corpus),
                           kept=int((~is_dup).sum()), duplicates=int(is_dup.sum()),
                           groups=len(np.unique(exemplar[is_dup])))
    if not cfg.dry_run:
        update_rows(fs, root, decisions)
        summary.written = True
    decided = _merge(table, decisions)
    summary.by_source, summary.report = write_report(fs, root, decided, summary.strategy, cfg.examples)
    summary.seconds = time.perf_counter() - start
    return summary


def _merge(table: pa.Table, decisions: pa.Table) -> pa.Table:
    """`table` (the eligible rows, same order as `decisions`) with the decision columns replaced."""
    for name in decisions.column_names[1:]:
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name),
                                 decisions[name].cast(table.schema.field(name).type))
    return table
