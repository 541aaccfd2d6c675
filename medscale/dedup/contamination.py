"""Contamination check: which evaluation images have a near-duplicate among the pre-training shards.

Evaluation sets are read exactly as sharding reads inputs (npz splits, image folders, DICOM, NIfTI), hashed,
and matched against the manifest's hashes with the same LSH search as `hash-global`, keeping only cross pairs.
Where an evaluation set holds volumes (DICOM series, NIfTI), they are also matched volume to volume, as
`volume-overlap` does: a corpus volume that contains an evaluation volume, or is contained in one, is the same
scan, and with `--exclude` every slice of it is excluded, also those too far from any evaluation slice to match
on their own.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medscale.core.errors import InputError
from medscale.core.executor import executor_for, ordered_map
from medscale.core.lease import Lease
from medscale.core.storage import filesystem, full_url, join, put_bytes_atomic
from medscale.core.summary import Summary
from medscale.data.config import ShardConfig
from medscale.data.manifest import EXCLUDED, read_manifest, update_rows
from medscale.data.sources import plan_reading, read_unit
from medscale.dedup.config import DedupConfig
from medscale.dedup.lsh import merge_pairs, parse_verify, plan_lsh, verified
from medscale.dedup.overlap import contained_pairs, nearest_slices, set_signatures, volume_sets
from medscale.dedup.report import REPORT_DIR
from medscale.dedup.strategies import cross_table_task
from medscale.hashing.hashes import hash_images

CORPUS_COST_S = 2e-5  # CPU-seconds per corpus sample searched (eval images are hashed on top), for `executor: auto`


@dataclass
class ContaminationSummary(Summary):
    """Per evaluation set (and split): how many of its images the pre-training corpus contains."""

    output: str
    hash: str
    threshold: int
    verify: str = ""
    sets: List[Dict[str, Any]] = field(default_factory=list)
    excluded: int = 0  # corpus samples marked excluded
    seconds: float = 0.0
    report: str = ""

    def format(self) -> str:
        """A few human lines."""
        rule = f"{self.hash}<={self.threshold}" + (f" and {self.verify}" if self.verify else "")
        lines = [f"medscale dedup --against: {rule} vs {self.output}"]
        for s in self.sets:
            lines.append(f"  {s['set']:<24} {s['split'] or '-':<6} {s['contaminated']:>7} of {s['images']:>7} "
                         f"({100 * s['fraction']:.1f}%) have a near-duplicate in the corpus")
            if s.get("volumes"):
                lines.append(f"  {'':<31} {s['overlapping_volumes']:>7} of {s['volumes']:>7} volumes are (in) a "
                             "corpus volume")
        lines.append(f"  corpus samples marked excluded: {self.excluded}; report: {self.report}")
        return "\n".join(lines)


def hash_eval_unit(unit, shard_cfg: ShardConfig, names: Tuple[str, ...]) -> Tuple[List[Tuple], np.ndarray]:
    """([(set, split, image id, volume id or None)], uint64 hashes `[N, len(names)]`) of every image of one
    evaluation-set unit (unreadable evaluation files are skipped: they cannot leak)."""
    ids, images = [], []
    for source, fields, pixels in read_unit(unit, shard_cfg):
        image_id = fields["path"] + (f"#{fields['split']}[{fields['frame']}]" if fields.get("split") else
                                     (f"#{fields['slice']}" if fields.get("slice") is not None else ""))
        ids.append((source, fields.get("split"), image_id, fields.get("volume")))
        images.append(pixels)
    hashes = hash_images(images, names)
    return ids, np.stack([hashes[n] for n in names], axis=1) if images else np.zeros((0, len(names)), np.uint64)


def _eval_hashes(cfg: DedupConfig, executor, names: Tuple[str, ...]) -> Tuple[List[Tuple], np.ndarray]:
    shard_cfg = ShardConfig(storage_options=cfg.storage_options, progress=False)
    units = plan_reading(cfg.against, cfg.storage_options, executor)
    ids: List[Tuple] = []
    hashes = []
    for unit_ids, unit_hashes in ordered_map(executor, hash_eval_unit, units, shard_cfg, names, desc="hash eval sets",
                                             unit="unit", progress=cfg.progress):
        ids.extend(unit_ids)
        hashes.append(unit_hashes)
    return ids, (np.concatenate(hashes) if hashes else np.zeros((0, len(names)), np.uint64))


def run_contamination(url: str, cfg: DedupConfig, force: bool = False) -> ContaminationSummary:
    """Match every image of `cfg.against` against the shards at `url`; optionally mark corpus hits excluded
    (then holding the output's writer lock; `force` breaks another run's)."""
    fs, root = filesystem(url, cfg.storage_options)
    if not cfg.exclude or cfg.dry_run:
        return _run_contamination(fs, root, url, cfg)
    with Lease(fs, root, "medscale dedup --against --exclude", force=force):
        return _run_contamination(fs, root, url, cfg)


def _run_contamination(fs, root: str, url: str, cfg: DedupConfig) -> ContaminationSummary:
    start = time.perf_counter()
    verify, limit = parse_verify(cfg.against_verify) if cfg.against_verify else ((), 0)
    names = (cfg.hash,) + tuple(verify)
    table = read_manifest(fs, root, columns=["key", "shard", "status", "volume", *dict.fromkeys(names)])
    table = table.filter(pc.is_valid(table["shard"]))
    if not len(table):
        raise InputError(f"{url}: no manifest with samples; run `medscale shard` into this URL first")
    for name in names:
        if table[name].null_count:
            raise InputError(f"{url}: samples without {name} in the manifest; run `medscale dedup {url} --rehash`")
    corpus_all = np.stack([table[n].to_numpy(zero_copy_only=False).astype(np.uint64) for n in names], axis=1)
    corpus = corpus_all[:, 0]
    keys = table["key"].to_pylist()
    executor = executor_for(cfg.executor, len(table) * CORPUS_COST_S, cfg.ray_address, cfg.num_cpus)
    try:
        ids, eval_all = _eval_hashes(cfg, executor, names)
        evals = eval_all[:, 0]
        hashes = np.concatenate([corpus, evals])
        groups = np.concatenate([np.zeros(len(corpus), np.int8), np.ones(len(evals), np.int8)])
        plan = plan_lsh(len(hashes), cfg.against_threshold, cfg.lsh_recall, seed=cfg.lsh_seed)
        pairs = merge_pairs(ordered_map(executor, cross_table_task, list(range(plan.tables)), hashes, plan, groups))
        pairs = verified(pairs, np.concatenate([corpus_all, eval_all])[:, 1:], limit)
    finally:
        executor.close()
    summary = ContaminationSummary(output=full_url(fs, root), hash=cfg.hash, threshold=cfg.against_threshold,
                                   verify=cfg.against_verify or "")
    matches: Dict[int, Tuple[int, int]] = {}  # eval index -> (corpus index, distance), the closest
    corpus_hits: Dict[int, Tuple[int, int]] = {}
    for i, j, d in pairs.tolist():  # i < j: i is the corpus sample, j the evaluation image
        e = j - len(corpus)
        if e not in matches or d < matches[e][1]:
            matches[e] = (i, d)
        if i not in corpus_hits or d < corpus_hits[i][1]:
            corpus_hits[i] = (e, d)
    per_set: Dict[Tuple, List[int]] = defaultdict(lambda: [0, 0])
    matched: Dict[Tuple, List[Dict]] = defaultdict(list)
    for e, (source, split, image_id, _) in enumerate(ids):
        per_set[(source, split)][0] += 1
        if e in matches:
            per_set[(source, split)][1] += 1
            c, d = matches[e]
            matched[(source, split)].append({"image": image_id, "corpus_key": keys[c], "distance": d})
    summary.sets = [{"set": s, "split": sp, "images": n, "contaminated": hit, "fraction": hit / n if n else 0.0,
                     "matched": matched[(s, sp)]} for (s, sp), (n, hit) in sorted(per_set.items(), key=str)]
    image_hits = set(corpus_hits)
    volume_hits = _volume_level(summary, cfg, table["volume"].to_pylist(), corpus, ids, evals)
    for i, hit in volume_hits.items():
        corpus_hits.setdefault(i, hit)
    if cfg.exclude and not cfg.dry_run and corpus_hits:
        hit = sorted(corpus_hits)
        update_rows(fs, root, pa.table({
            "key": [keys[i] for i in hit], "status": [EXCLUDED] * len(hit),
            "duplicate_of": [ids[corpus_hits[i][0]][2] for i in hit],
            "dedup_strategy": [f"contamination {summary.hash}<={summary.threshold}"
                               if i not in volume_hits or i in image_hits
                               else f"contamination volume-overlap containment>={cfg.containment:g}" for i in hit],
            "dedup_distance": np.array([corpus_hits[i][1] for i in hit], np.float32)}))
        summary.excluded = len(hit)
    summary.seconds = time.perf_counter() - start
    path = join(root, REPORT_DIR, "contamination.json")
    put_bytes_atomic(fs, path, json.dumps(summary.as_dict(), indent=1).encode())
    summary.report = full_url(fs, path)
    return summary


def _groups(volumes: List) -> Dict[str, np.ndarray]:
    """volume id -> indices of its images (images without a volume are left out)."""
    out: Dict[str, List[int]] = defaultdict(list)
    for i, v in enumerate(volumes):
        if v is not None:
            out[v].append(i)
    return {v: np.array(m, np.int64) for v, m in out.items()}


def _volume_level(summary: ContaminationSummary, cfg: DedupConfig, corpus_volumes: List, corpus: np.ndarray,
                  ids: List[Tuple], evals: np.ndarray) -> Dict[int, Tuple[int, int]]:
    """Match evaluation volumes against corpus volumes (containment either way); adds the counts to each set of
    `summary` and returns {corpus index: (evaluation image index, distance)} for every slice of a matched corpus
    volume (its nearest slice in the evaluation volume)."""
    eval_groups = _groups([(i[0], i[1], i[3]) if i[3] is not None else None for i in ids])
    corpus_groups = _groups(corpus_volumes)
    if not eval_groups or not corpus_groups:
        return {}
    names, members = list(corpus_groups) + list(eval_groups), list(corpus_groups.values()) + list(eval_groups.values())
    hashes = np.concatenate([corpus, evals])
    offset = np.r_[np.zeros(len(corpus_groups), np.int64), np.full(len(eval_groups), len(corpus), np.int64)]
    sets = volume_sets(hashes, [m + o for m, o in zip(members, offset)])
    pairs = contained_pairs(sets, set_signatures(sets, cfg.num_perm), cfg.containment,
                            groups=np.r_[np.zeros(len(corpus_groups)), np.ones(len(eval_groups))])
    hits: Dict[int, Tuple[int, int]] = {}
    matched: Dict[Tuple, set] = defaultdict(set)
    for q, x, _ in pairs.astype(np.int64):
        c, e = (q, x) if q < len(corpus_groups) else (x, q)
        mine, theirs = corpus_groups[names[c]], eval_groups[names[e]]
        nearest, dist = nearest_slices(corpus[mine], evals[theirs])
        for i, j, d in zip(mine.tolist(), theirs[nearest].tolist(), dist.tolist()):
            if i not in hits or d < hits[i][1]:
                hits[i] = (j, d)
        matched[names[e][:2]].add(names[e][2])
    counts: Dict[Tuple, int] = defaultdict(int)
    for key in eval_groups:
        counts[key[:2]] += 1
    for row in summary.sets:
        key = (row["set"], row["split"])
        row["volumes"], row["overlapping_volumes"] = counts.get(key, 0), len(matched.get(key, ()))
    return hits
