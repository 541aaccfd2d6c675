"""Read images from inputs exactly as sharding does, without writing shards: for stages that need pixels of
files outside a corpus (the contamination check reads evaluation sets this way)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from medscale.core.errors import InputError
from medscale.core.executor import ordered_map
from medscale.data.config import ShardConfig
from medscale.data.ingest import iter_item
from medscale.data.plan import WorkUnit, expand_inputs, plan_units, scan_batch

SCAN_BATCH = 256  # files scanned per task


def plan_reading(inputs: Sequence[str], storage_options: Mapping[str, Any], executor,
                 unit_samples: int = 2000, labels_from_folders: bool = False) -> List[WorkUnit]:
    """Units of about `unit_samples` images covering every readable file of `inputs` (files, folders, URLs,
    `NAME=PATH`); scanned through `executor`. Unreadable files are skipped; none readable at all is an error.
    `labels_from_folders`: PNG/JPEG images are labelled by their class sub-folder, as sharding does."""
    files = expand_inputs(inputs, storage_options)
    batches = [files[i:i + SCAN_BATCH] for i in range(0, len(files), SCAN_BATCH)]
    scans = [r for batch in ordered_map(executor, scan_batch, batches, storage_options, progress=False)
             for r in batch]
    bad = [r for r in scans if r.error]
    if bad and len(bad) == len(scans):
        raise InputError(f"no readable images in {list(inputs)}: {bad[0].file.url}: {bad[0].error}")
    labels = {r.file.source: labels_from_folders for r in scans}
    return plan_units(scans, unit_samples, 0, set(), labels, {})


def read_unit(unit: WorkUnit, cfg: ShardConfig,
              strict: bool = False) -> Iterator[Tuple[str, Dict[str, Any], np.ndarray]]:
    """(source, fields, pixels) of every readable image of `unit`, converted as `cfg` says; unreadable files are
    skipped, or with `strict` an InputError naming the file and why. `fields` are the manifest fields sharding
    would record (path, split, frame, slice...)."""
    for item in unit.items:
        for produced in iter_item(item, cfg, unit.unit_id):
            if not isinstance(produced, dict):  # a dict is a quarantine row
                yield item.source, produced[0], produced[1]
            elif strict:
                raise InputError(f"{produced.get('path')}: {produced.get('reason')}")
