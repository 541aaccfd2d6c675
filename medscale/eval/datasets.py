"""Labelled evaluation sets, read the way sharding reads images: MedMNIST npz (labels `(N,)` or `(N, 1)`), image
folders (class sub-folders, optionally under train/val/test folders), `medscale shard` outputs with labels, and
DICOM folders labelled by a header tag (Modality, BodyPartExamined).

A set without splits of its own is split by a hash of each image's volume (or file): 70% train, 10% val, 20%
test, so that no patient's slices fall on both sides. Images of another size than the set's most common one are
resized to it (bilinear), and grey images are stacked to three channels when the set mixes both.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from medscale.core.errors import InputError
from medscale.core.executor import LocalExecutor
from medscale.core.storage import filesystem, join
from medscale.data.config import ShardConfig
from medscale.data.sources import plan_reading, read_unit

SPLITS = ("train", "val", "test")
LABEL_TAGS = {"Modality": "modality", "BodyPartExamined": "body_part"}


@dataclass
class LabelledSet:
    """uint8 images and int labels per split (`images[split]: [N, H, W]` or `[N, H, W, 3]`, `labels[split]: [N]`)."""

    name: str
    url: str
    images: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray]
    classes: List[str]
    digest: str

    def split(self, split: str, task: str) -> Tuple[np.ndarray, np.ndarray]:
        """(images, labels) of `split`, or a clear error naming the set and the task that needs it."""
        if split not in self.images or not len(self.images[split]):
            raise InputError(f"{self.url}: no '{split}' split, which task {task} needs (splits here: "
                             f"{', '.join(sorted(self.images)) or 'none'})")
        return self.images[split], self.labels[split]


BUNDLED = Path(__file__).resolve().parents[1] / "demo_data" / "medmnist"  # shipped in the package


def parse_dataset(spec: str) -> Tuple[str, str]:
    """`NAME=PATH` or `PATH` -> (name, url); the name defaults to the file or folder name without extension. PATH
    may be `bundled:SET`, a MedMNIST set shipped with medscale (breastmnist, pneumoniamnist)."""
    name, sep, url = spec.partition("=")
    if sep and "/" not in name and ":" not in name:
        return name, _bundled(url)
    if spec.startswith("bundled:"):
        return spec.split(":", 1)[1], _bundled(spec)
    stem = spec.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".npz", ".nii.gz", ".nii", ".dcm"):
        stem = stem[: -len(ext)] if stem.endswith(ext) else stem
    return stem, spec


def _bundled(url: str) -> str:
    """The file of a `bundled:SET` url (any other url as it is)."""
    if not url.startswith("bundled:"):
        return url
    found = sorted(BUNDLED.glob(f"{url.split(':', 1)[1]}_*.npz"))
    if not found:
        raise InputError(f"{url}: no bundled dataset of that name; bundled: "
                         f"{', '.join(sorted(p.stem.split('_')[0] for p in BUNDLED.glob('*.npz')))}")
    return str(found[0])


def _split_of(key: str) -> str:
    """70/10/20 by a stable hash of `key` (a volume or a file)."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 7 else "val" if bucket < 8 else "test"


def _is_shard_output(url: str, storage_options: Mapping[str, Any]) -> bool:
    fs, root = filesystem(url, storage_options)
    return fs.exists(join(root, "manifest.parquet")) or fs.exists(join(root, "manifest"))


def _from_shards(url: str, storage_options: Mapping[str, Any]) -> List[Tuple[Optional[str], Any, np.ndarray, str]]:
    from medscale.data.manifest import read_manifest
    from medscale.data.png import decode_png
    from medscale.data.shards import read_members

    fs, root = filesystem(url, storage_options)
    table = read_manifest(fs, root, ["key", "shard", "status", "split", "label", "label_name", "volume", "path"])
    rows = [r for r in table.to_pylist() if r["status"] == "kept"]
    out = []
    for shard in sorted({r["shard"] for r in rows}):
        mine = [r for r in rows if r["shard"] == shard]
        members = read_members(fs, root, shard, [r["key"] for r in mine])
        for r in mine:
            label = r["label_name"] if r["label_name"] is not None else r["label"]
            out.append((r["split"], label, decode_png(members[r["key"]]), r["volume"] or r["path"] or r["key"]))
    return out


def _from_files(url: str, storage_options: Mapping[str, Any], label_tag: str) -> List[Tuple]:
    fs, root = filesystem(url, storage_options)
    split_dirs = [s for s in SPLITS if fs.isdir(join(root, s))]
    inputs = [(s, join(url, s)) for s in split_dirs] if split_dirs else [(None, url)]
    cfg = ShardConfig(storage_options=dict(storage_options), progress=False)
    out = []
    for split, path in inputs:
        for unit in plan_reading([path], storage_options, LocalExecutor(), labels_from_folders=True):
            for _, fields, pixels in read_unit(unit, cfg, strict=True):
                if fields.get("labels") is not None and not isinstance(fields.get("labels"), int) \
                        and fields.get("label") is None:
                    raise InputError(f"{fields.get('path', url)}: multi-label rows are not supported by the "
                                     "evaluation tasks (one class per image)")
                if fields.get("kind") == "dicom":
                    label = fields.get(LABEL_TAGS.get(label_tag, label_tag.lower()))
                else:
                    label = fields.get("label_name") if fields.get("label_name") is not None else fields.get("label")
                out.append((split or fields.get("split"), label, pixels,
                            fields.get("volume") or fields.get("path") or ""))
    return out


def _uniform(images: List[np.ndarray]) -> np.ndarray:
    """One array: the most common (H, W); grey stacked to 3 channels when colour is present."""
    from PIL import Image

    size = Counter(im.shape[:2] for im in images).most_common(1)[0][0]
    colour = any(im.ndim == 3 for im in images)
    out = []
    for im in images:
        if im.dtype != np.uint8:
            im = (im >> 8).astype(np.uint8) if im.dtype == np.uint16 else im.astype(np.uint8)
        if im.shape[:2] != size:
            im = np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BILINEAR))
        if colour and im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out.append(im)
    return np.stack(out)


def load_dataset(spec: str, storage_options: Mapping[str, Any] = (), label_tag: str = "Modality") -> LabelledSet:
    """The labelled set `spec` names (`NAME=PATH` or `PATH`); clear errors for a set without labels."""
    name, url = parse_dataset(spec)
    options = dict(storage_options or {})
    try:
        rows = _from_shards(url, options) if _is_shard_output(url, options) else _from_files(url, options, label_tag)
    except FileNotFoundError as exc:
        raise InputError(f"{url}: no such dataset ({exc})") from None
    if not rows:
        raise InputError(f"{url}: no images found")
    unlabelled = sum(1 for r in rows if r[1] is None or r[1] == "")
    if unlabelled:
        raise InputError(f"{url}: {unlabelled} of {len(rows)} images have no label (npz needs *_labels arrays "
                         "of one row per image, folders class sub-folders, DICOM the header tag eval.label_tag)")
    names = sorted({r[1] for r in rows}, key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else str(v)))
    ids = {v: (v if all(isinstance(n, int) for n in names) else i) for i, v in enumerate(names)}
    images, labels = {}, {}
    for split in SPLITS:
        mine = [r for r in rows if (r[0] or _split_of(r[3])) == split]
        if mine:
            images[split] = _uniform([r[2] for r in mine])
            labels[split] = np.asarray([ids[r[1]] for r in mine], dtype=np.int64)
    sha = hashlib.sha1()
    for split in sorted(images):
        sha.update(split.encode())
        sha.update(np.ascontiguousarray(images[split]).tobytes())
        sha.update(labels[split].tobytes())
    return LabelledSet(name, url, images, labels, [str(n) for n in names], sha.hexdigest()[:16])
