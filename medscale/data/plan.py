"""Find input files, scan them (kind, DICOM headers, npz shapes), and plan work units for the Ray tasks."""

from __future__ import annotations

import logging
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import fsspec

from medscale.core.digest import digest
from medscale.core.errors import InputError, StorageError
from medscale.core.faults import describe, fault_kind, retrying
from medscale.core.storage import filesystem, full_url
from medscale.data import detect
from medscale.data.dicom import DicomHeader, order_series, read_header
from medscale.data.npz import npz_splits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFile:
    """One file of one source; `url` reopens it with fsspec."""

    source: str
    url: str
    root: str  # the input it was found under (labels come from sub-folders of it)
    size: int


@dataclass
class ScanResult:
    """What the scan learned of one file: its kind, and the header facts the planner needs; or why it was rejected."""

    file: InputFile
    kind: Optional[str] = None
    error: Optional[str] = None
    dicom: Optional[DicomHeader] = None
    npz: Optional[Dict[str, Tuple[int, Tuple[int, ...], Optional[Tuple[int, ...]]]]] = None
    slices: int = 1  # estimated samples


@dataclass
class SeriesItem:
    """A DICOM series (or single file) in anatomical order."""

    source: str
    volume: str
    files: List[Tuple[InputFile, DicomHeader, Optional[float]]]  # (file, header, position along the normal)
    order: str


@dataclass
class NiftiItem:
    """One volume of a NIfTI file."""
    source: str
    volume: str
    file: InputFile


@dataclass
class ImageItem:
    """One 2D image file, with its folder's label when asked."""
    source: str
    file: InputFile
    label: Optional[int] = None
    label_name: Optional[str] = None


@dataclass
class NpzItem:
    """Rows `start:stop` of one split of a MedMNIST-style npz."""
    source: str
    file: InputFile
    split: str
    start: int
    stop: int
    row_pixels: int = 1


Item = Union[SeriesItem, NiftiItem, ImageItem, NpzItem]


@dataclass
class WorkUnit:
    """One Ray task: a few volumes, a batch of images or an npz row range, about one shard of samples."""

    unit_id: str
    kind: str
    items: List[Item] = field(default_factory=list)
    est_samples: int = 0
    cost: float = 0.0  # rough pixel count, to start the longest units first

    def inputs(self) -> List[Tuple[str, str]]:
        """(source, file URL) of every input file this unit reads."""
        out = []
        for item in self.items:
            if isinstance(item, SeriesItem):
                out.extend((item.source, f.url) for f, _, _ in item.files)
            else:
                out.append((item.source, item.file.url))
        return out


def source_name(spec: str) -> Tuple[str, str]:
    """(source name, URL) of an input: `name=URL`, or the URL with the name taken from its last component."""
    if "=" in spec and "://" not in spec.split("=", 1)[0]:
        name, url = spec.split("=", 1)
        return name, url
    base = spec.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".nii.gz", ".npz", ".nii", ".dcm", ".png", ".jpg", ".jpeg"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return base or "input", spec


def expand_inputs(specs: Sequence[str], storage_options: Optional[Mapping[str, Any]] = None) -> List[InputFile]:
    """Every file under the given inputs (files, folders or URLs), sorted, hidden files skipped."""
    files: Dict[str, InputFile] = {}
    for spec in specs:
        source, url = source_name(spec)
        fs, path = filesystem(url, storage_options)
        if not fs.exists(path):
            raise StorageError(f"input {url!r} does not exist; check the path or URL (and credentials for s3://)")
        if fs.isdir(path):
            found = fs.find(path, detail=True)
            root = path
        else:
            found = {path: fs.info(path)}
            root = os.path.dirname(path)
        before = len(files)
        for p, info in sorted(found.items()):
            if info.get("type") == "directory" or any(part.startswith(".") for part in p[len(root):].split("/")):
                continue
            u = full_url(fs, p)
            files.setdefault(u, InputFile(source, u, full_url(fs, root), int(info.get("size") or 0)))
        if len(files) == before:
            logger.warning("input %s holds no files", url)
    return sorted(files.values(), key=lambda f: (f.source, f.url))


def _nifti_slices(head: bytes) -> int:
    raw = head
    if raw[:2] == b"\x1f\x8b":
        raw = detect.gunzip_head(raw)
    for order in ("<", ">"):
        if len(raw) >= 56 and struct.unpack(order + "i", raw[:4])[0] == 348:
            dims = struct.unpack(order + "8h", raw[40:56])
            return max(1, max(dims[1:4]))
    return 256


def scan_file(file: InputFile, storage_options: Optional[Mapping[str, Any]] = None) -> ScanResult:
    """Detect the kind of one file from its bytes and read what planning needs; errors become `error`."""
    result = ScanResult(file)
    if file.size == 0:
        result.error = "zero-size file"
        return result
    try:
        with fsspec.open(file.url, "rb", **dict(storage_options or {})) as fh:
            head = detect.read_head(fh, file.url)
            kind = detect.detect_kind(head, file.url)
            if kind is None:
                result.error = "unrecognised file type (not DICOM, NIfTI, PNG/JPEG or npz)"
                return result
            result.kind = kind
            if kind == detect.DICOM:
                fh.seek(0)
                result.dicom = read_header(fh, file.url)
                result.slices = result.dicom.frames
            elif kind == detect.NPZ:
                fh.seek(0)
                result.npz = npz_splits(fh, file.url)
                result.slices = sum(rows for rows, _, _ in result.npz.values())
            elif kind == detect.NIFTI:
                result.slices = _nifti_slices(head)
    except Exception as exc:
        if fault_kind(exc):  # a failed attempt (storage, network), not a bad file: the caller retries or stops
            raise
        result.error = (str(exc).replace(file.url + ": ", "") if isinstance(exc, InputError)
                        else f"cannot read ({describe(exc)})")
    return result


def scan_batch(files: Sequence[InputFile], storage_options: Optional[Mapping[str, Any]] = None,
               retries: int = 0) -> List[ScanResult]:
    """`scan_file` over a batch (one task); a file's transient storage faults are retried `retries` times."""
    return [retrying(scan_file, f, storage_options, retries=retries, what=f"scan {f.url}") for f in files]


def _label_folders(images: Sequence[ScanResult]) -> Dict[str, Tuple[int, str]]:
    """{url: (label, class name)} from the first sub-folder under each input root, classes sorted by name."""
    names = {}
    for r in images:
        rel = r.file.url[len(r.file.root):].strip("/")
        names[r.file.url] = rel.split("/")[0] if "/" in rel else ""
    classes = sorted({n for n in names.values() if n})
    index = {name: i for i, name in enumerate(classes)}
    return {u: (index[n], n) for u, n in names.items() if n}


def plan_units(scans: Sequence[ScanResult], shard_size: int, files_per_unit: int, done_units: set,
               labels_from_folders: Mapping[str, bool], stride: Mapping[str, int]) -> List[WorkUnit]:
    """Group scanned files into work units: DICOM series (ordered) and NIfTI volumes packed up to `shard_size`
    slices a unit, images in batches of `files_per_unit`, npz splits in row ranges of `shard_size`.
    Deterministic, so a rerun plans the same units and skips those in `done_units`."""
    by_kind: Dict[str, List[ScanResult]] = defaultdict(list)
    for r in scans:
        if r.error is None:
            by_kind[r.kind].append(r)
    units: List[WorkUnit] = []

    volumes: List[Tuple[Item, int]] = []
    series: Dict[Tuple[str, str], List[ScanResult]] = defaultdict(list)
    for r in by_kind[detect.DICOM]:
        series[(r.file.source, r.dicom.series_uid or r.file.url)].append(r)
    for (source, uid), members in sorted(series.items()):
        by_url = {m.file.url: m.file for m in members}
        ordered, positions, method = order_series([m.dicom for m in members])
        files = [(by_url[h.path], h, p) for h, p in zip(ordered, positions)]
        est = sum(h.frames for h in ordered) // max(1, stride.get(source, 1)) + 1
        volumes.append((SeriesItem(source, "s" + digest(source, uid), files, method), est))
    for r in by_kind[detect.NIFTI]:
        volumes.append((NiftiItem(r.file.source, "n" + digest(r.file.url), r.file), r.slices))
    batch: List[Item] = []
    total = 0
    for item, est in volumes:  # pack small volumes together, about one shard per unit
        if batch and total + est > shard_size:
            units.append(_unit("volumes", batch, total))
            batch, total = [], 0
        batch.append(item)
        total += est
    if batch:
        units.append(_unit("volumes", batch, total))

    per_unit = files_per_unit or shard_size
    images_by_source: Dict[str, List[ScanResult]] = defaultdict(list)
    for r in by_kind[detect.IMAGE]:
        images_by_source[r.file.source].append(r)
    for source, images in sorted(images_by_source.items()):
        labels = _label_folders(images) if labels_from_folders.get(source, False) else {}
        items = [ImageItem(source, r.file, *labels.get(r.file.url, (None, None))) for r in images]
        for i in range(0, len(items), per_unit):
            chunk = items[i:i + per_unit]
            units.append(_unit("images", chunk, len(chunk)))

    for r in by_kind[detect.NPZ]:
        for split, (rows, shape, _) in sorted(r.npz.items()):
            pixels = 1
            for d in shape:
                pixels *= d
            for start in range(0, rows, shard_size):
                stop = min(rows, start + shard_size)
                item = NpzItem(r.file.source, r.file, split, start, stop, pixels)
                units.append(_unit("npz", [item], stop - start))
    todo = [u for u in units if u.unit_id not in done_units]
    # longest first: the last tasks to finish are then short ones, so no worker idles on a long tail
    return sorted(todo, key=lambda u: -u.cost)


def _cost(item: Item) -> float:
    if isinstance(item, SeriesItem):
        return float(sum(h.rows * h.columns * h.frames for _, h, _ in item.files))
    if isinstance(item, NpzItem):
        return float((item.stop - item.start) * item.row_pixels)
    return 2.0 * item.file.size  # compressed bytes of a PNG/JPEG/NIfTI: about half a byte per pixel


def _unit(kind: str, items: List[Item], est: int) -> WorkUnit:
    ident = []
    for item in items:
        if isinstance(item, SeriesItem):
            ident.append((item.volume, tuple(f.url for f, _, _ in item.files)))
        elif isinstance(item, NpzItem):
            ident.append((item.file.url, item.split, item.start, item.stop))
        else:
            ident.append(item.file.url)
    return WorkUnit("u" + digest(kind, *ident, n=16), kind, items, est, sum(_cost(i) for i in items))
