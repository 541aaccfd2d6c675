"""One work unit, end to end inside a Ray task: read its inputs as 2D slices, encode PNG, write staged shards.

Reduction while sharding (`shard.reduce`) uses a reducer handed in by the caller (`make_reducer`, a picklable
factory of one `SliceReducer` per volume): the command line takes it from `dedup`, which `data` never imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Tuple

import fsspec
import numpy as np

from medscale.core.digest import digest
from medscale.core.errors import InputError
from medscale.core.faults import TRANSIENT, describe, fault_kind, retrying, strip_ansi
from medscale.core.storage import filesystem, is_local
from medscale.data.commit import StagedShards
from medscale.data.config import ShardConfig
from medscale.data.dicom import read_frames
from medscale.data.images import read_image
from medscale.data.intensity import colour_to_output, grey_to_output
from medscale.data.manifest import DUPLICATE, KEPT, QUARANTINED
from medscale.data.nifti import load_volume, volume_to_slices
from medscale.data.npz import read_npz_rows
from medscale.data.plan import ImageItem, Item, NiftiItem, NpzItem, SeriesItem, WorkUnit
from medscale.data.png import encode_png
from medscale.hashing.hashes import hash_images

logger = logging.getLogger(__name__)
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass
class UnitResult:
    """What a finished unit hands the driver: manifest rows and the staged shards they point into."""

    unit_id: str
    rows: List[Dict[str, Any]] = field(default_factory=list)
    staged: List[str] = field(default_factory=list)  # staged tar paths on the output store, `.idx` beside each
    samples: int = 0
    quarantined: int = 0
    bytes: int = 0
    volumes: int = 0


def _raise_faults(exc: BaseException) -> None:
    """Re-raise `exc` when it is a failed attempt (storage, network) rather than a bad file: never quarantine it."""
    if fault_kind(exc):
        raise exc


def quarantine_row(source: str, kind: Optional[str], url: str, reason: str, unit: Optional[str]) -> Dict[str, Any]:
    """A manifest row for an input that could not be used (object reprs scrubbed so reasons are reproducible)."""
    reason = _OBJECT_REPR.sub("<file>", strip_ansi(reason))
    return {"status": QUARANTINED, "reason": reason, "source": source, "kind": kind, "path": url, "unit": unit}


@contextlib.contextmanager
def local_copy(url: str, storage_options: Mapping[str, Any]) -> Iterator[str]:
    """A local path for `url` (the file itself when local, else a temporary download), for readers that need one."""
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        yield path
        return
    suffix = ".nii.gz" if url.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        os.unlink(tmp)


class SliceReducer(Protocol):
    """Streaming per-volume reduction: offered slices in order, says which to drop (see `dedup.volume`)."""

    def offer(self, value: int, position: int) -> Tuple[Optional[int], int]:
        """(None, 0) to keep the slice, else (position of the kept slice it duplicates, distance)."""


# Each reader below yields (sample fields, output pixels) or a quarantine row (dict with status=quarantined).
def _series_samples(item: SeriesItem, cfg: ShardConfig, unit: str) -> Iterator[Any]:
    opts = cfg.source_options(item.source)
    index = 0
    for file, header, position in item.files:
        first = index
        index += header.frames
        try:
            with fsspec.open(file.url, "rb", **cfg.storage_options) as fh:
                frames, colour = read_frames(fh, file.url)
        except InputError as exc:
            _raise_faults(exc)
            yield quarantine_row(item.source, "dicom", file.url, str(exc).replace(file.url + ": ", ""), unit)
            continue
        for f in range(frames.shape[0]):
            s = first + f
            if s % opts.slice_stride:
                continue
            pixels = (colour_to_output(frames[f], cfg.max_size) if colour else
                      grey_to_output(frames[f], cfg.bit_depth, cfg.max_size, opts.window_center, opts.window_width))
            yield {"key": f"{item.volume}_{s:05d}", "kind": "dicom", "path": file.url, "volume": item.volume,
                   "slice": s, "frame": f, "position": position, "modality": opts.modality or header.modality,
                   "body_part": header.body_part or None, "spacing": header.spacing or None,
                   "series_uid": header.series_uid or None, "study_uid": header.study_uid or None,
                   "order": item.order}, pixels


def _nifti_samples(item: NiftiItem, cfg: ShardConfig, unit: str) -> Iterator[Any]:
    opts = cfg.source_options(item.source)
    try:
        with local_copy(item.file.url, cfg.storage_options) as path:
            voxels, spacing = load_volume(path, opts.nifti_volume)
    except InputError as exc:
        _raise_faults(exc)
        yield quarantine_row(item.source, "nifti", item.file.url, str(exc).split(": ", 1)[-1], unit)
        return
    in_plane = [s for i, s in enumerate(spacing) if i != opts.nifti_axis]
    for s, plane in volume_to_slices(voxels, opts.nifti_axis, opts.slice_stride):
        pixels = grey_to_output(plane, cfg.bit_depth, cfg.max_size, opts.window_center, opts.window_width)
        yield {"key": f"{item.volume}_{s:05d}", "kind": "nifti", "path": item.file.url, "volume": item.volume,
               "slice": s, "modality": opts.modality, "spacing": in_plane + [spacing[opts.nifti_axis]]}, pixels


def _image_sample(item: ImageItem, cfg: ShardConfig, unit: str) -> Iterator[Any]:
    try:
        with fsspec.open(item.file.url, "rb", **cfg.storage_options) as fh:
            raw, colour, display_max = read_image(fh, item.file.url)
    except InputError as exc:
        _raise_faults(exc)
        yield quarantine_row(item.source, "image", item.file.url, str(exc).replace(item.file.url + ": ", ""), unit)
        return
    pixels = (colour_to_output(raw, cfg.max_size) if colour else
              grey_to_output(raw, cfg.bit_depth, cfg.max_size, display_max=display_max))
    yield {"key": "i" + digest(item.file.url, n=16), "kind": "image", "path": item.file.url,
           "modality": cfg.source_options(item.source).modality, "label": item.label,
           "label_name": item.label_name}, pixels


def _npz_samples(item: NpzItem, cfg: ShardConfig, unit: str) -> Iterator[Any]:
    try:
        with fsspec.open(item.file.url, "rb", **cfg.storage_options) as fh:
            images, labels = read_npz_rows(fh, item.file.url, item.split, item.start, item.stop)
    except InputError as exc:
        _raise_faults(exc)
        yield quarantine_row(item.source, "npz", item.file.url, str(exc).replace(item.file.url + ": ", ""), unit)
        return
    modality = cfg.source_options(item.source).modality
    display_max = 65535.0 if images.dtype == np.uint16 else 255.0
    prefix = "z" + digest(item.file.url, n=10)
    for i in range(images.shape[0]):
        raw = images[i]
        colour = raw.ndim == 3 and raw.shape[-1] == 3
        if raw.ndim == 3 and not colour:
            raw = raw[..., 0]
        pixels = (colour_to_output(raw, cfg.max_size) if colour else
                  grey_to_output(raw, cfg.bit_depth, cfg.max_size, display_max=display_max))
        label = labels[i] if labels is not None else None
        row = item.start + i
        yield {"key": f"{prefix}_{item.split or 'all'}_{row:06d}", "kind": "npz", "path": item.file.url,
               "frame": row, "split": item.split, "modality": modality,
               "label": label if isinstance(label, int) else None, "labels": label}, pixels


_READERS = {SeriesItem: _series_samples, NiftiItem: _nifti_samples, ImageItem: _image_sample, NpzItem: _npz_samples}


def iter_item(item: Item, cfg: ShardConfig, unit: str) -> Iterator[Any]:
    """Samples (fields, pixels) and quarantine rows of one item; an unexpected error quarantines what is left."""
    try:
        yield from _READERS[type(item)](item, cfg, unit)
    except Exception as exc:  # a decoder bug on one file must not take the unit down (a storage fault must)
        _raise_faults(exc)
        url = item.file.url if not isinstance(item, SeriesItem) else item.files[0][0].url
        yield quarantine_row(item.source, None, url, f"unexpected {type(exc).__name__}: {exc}", unit)


_JSON_FIELDS = ("key", "source", "kind", "modality", "body_part", "volume", "slice", "position", "frame", "split",
                "spacing", "path", "label", "labels", "label_name", "series_uid", "study_uid", "order",
                "height", "width", "channels", "bits")


HASH_BATCH = 256  # samples hashed together, across the items of a unit (the batched hashes amortise numpy calls)
HASH_BATCH_BYTES = 64 << 20  # ... or fewer when they are large, so that a task's memory stays bounded


@dataclass
class _Pending:
    """A produced sample waiting for its hashes: its item's source and, when reducing, its volume's reducer."""

    fields: Dict[str, Any]
    pixels: np.ndarray
    source: str
    reducer: Optional[SliceReducer]
    volume_keys: List[str]


def _write_samples(samples: List[_Pending], cfg: ShardConfig, unit_id: str, writer: StagedShards,
                   result: UnitResult) -> None:
    """Hash a batch of samples, drop Less-is-More duplicates when reducing, encode and write the rest in order."""
    if not samples:
        return
    hashes = hash_images([s.pixels for s in samples])
    strategy = f"{cfg.reduce} {cfg.reduce_hash}<={cfg.reduce_threshold} (sharding)"
    for i, sample in enumerate(samples):
        fields, pixels = sample.fields, sample.pixels
        fields.update({name: int(values[i]) for name, values in hashes.items()})
        fields.update(source=sample.source, height=pixels.shape[0], width=pixels.shape[1],
                      channels=3 if pixels.ndim == 3 else 1, bits=pixels.dtype.itemsize * 8, unit=unit_id)
        if sample.reducer is not None:
            ref, dist = sample.reducer.offer(fields[cfg.reduce_hash], len(sample.volume_keys))
            sample.volume_keys.append(fields["key"])
            fields["dedup_strategy"] = strategy
            if ref is not None:  # recorded in the manifest, not written to a shard
                fields.pop("order", None)
                fields.pop("labels", None)
                fields.update(status=DUPLICATE, duplicate_of=sample.volume_keys[ref], dedup_distance=float(dist))
                result.rows.append(fields)
                continue
        png = encode_png(pixels, cfg.png_compress_level)
        members = {"png": png, "json": json.dumps({k: fields.get(k) for k in _JSON_FIELDS
                                                   if fields.get(k) is not None}).encode()}
        if fields.get("label") is not None:
            members["cls"] = str(fields["label"]).encode()
        shard = writer.write(fields["key"], members)
        fields.update(status=KEPT, bytes=len(png), shard=shard)
        fields.pop("labels", None)
        fields.pop("order", None)
        result.rows.append(fields)
        result.samples += 1
        result.bytes += len(png)


def process_unit(unit: WorkUnit, cfg: ShardConfig, output_url: str,
                 make_reducer: Optional[Callable[[], SliceReducer]] = None) -> UnitResult:
    """Read, convert and encode every sample of `unit` into staged shards under `output_url/_staging/UNIT/`;
    with `make_reducer`, each volume's slices are offered to a fresh reducer and its duplicates are not written."""
    result = UnitResult(unit.unit_id)
    pending: List[_Pending] = []
    pending_bytes = 0
    with StagedShards(output_url, cfg.storage_options, unit.unit_id, cfg.shard_size, cfg.shard_bytes) as writer:
        for item in unit.items:
            volume = isinstance(item, (SeriesItem, NiftiItem))
            reducer = make_reducer() if make_reducer is not None and volume else None
            volume_keys: List[str] = []
            produced_any = False
            for produced in iter_item(item, cfg, unit.unit_id):
                if isinstance(produced, dict):
                    result.rows.append(produced)
                    result.quarantined += 1
                    continue
                produced_any = True
                pending.append(_Pending(produced[0], produced[1], item.source, reducer, volume_keys))
                pending_bytes += produced[1].nbytes
                if len(pending) >= HASH_BATCH or pending_bytes >= HASH_BATCH_BYTES:
                    _write_samples(pending, cfg, unit.unit_id, writer, result)
                    pending, pending_bytes = [], 0
            result.volumes += volume and produced_any
        _write_samples(pending, cfg, unit.unit_id, writer, result)
    result.staged = writer.staged
    return result


@dataclass
class UnitFailure:
    """A unit that could not be done (a storage fault, retries spent, or an unexpected error): its inputs are left
    to the next run, never quarantined."""

    unit_id: str
    kind: str  # transient (retries spent) | fatal | error (unexpected)
    message: str  # one line: `Type: message`
    details: str  # the worker's full traceback, for the log file
    attempts: int = 1


def run_unit(unit: WorkUnit, cfg: ShardConfig, output_url: str,
             make_reducer: Optional[Callable[[], SliceReducer]] = None) -> Any:
    """`process_unit` as a task: transient faults are retried `cfg.retries` times (waits 1, 2, 4... s); returns
    its UnitResult, or a UnitFailure (never raises, so that no traceback reaches the terminal)."""
    try:
        return retrying(process_unit, unit, cfg, output_url, make_reducer, retries=cfg.retries,
                        what=f"unit {unit.unit_id}")
    except Exception as exc:
        kind = fault_kind(exc)
        logger.error("unit %s failed: %s", unit.unit_id, describe(exc))
        return UnitFailure(unit.unit_id, kind or "error", describe(exc), traceback.format_exc(),
                           cfg.retries + 1 if kind == TRANSIENT else 1)
