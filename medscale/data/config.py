"""The data stage's config sections: `shard` (the sharding service) and `loader` (how trainers read shards).

Torch-free: sharding workers unpickle these classes, and must not load torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from medscale.core.config import check, check_choice
from medscale.core.executor import EXECUTOR_CHOICES
from medscale.data.order import REMAINDERS
from medscale.hashing.hashes import HASH_NAMES

AUGMENTS = ("mae", "contrastive", "resize")  # the augmentation graphs; the torch and DALI twins are keyed by these
LOADERS = ("auto", "torch", "dali")
DALI_DEVICES = ("auto", "gpu", "cpu")
BATCH_DTYPES = ("auto", "float32", "uint8")


@dataclass
class SourceOptions:
    """How one input source is read; `shard.defaults` applies to all, `shard.sources.NAME` to one."""

    modality: Optional[str] = None  # overrides the detected modality (npz/png/NIfTI carry none)
    window_center: Optional[float] = None  # CT window in HU; both center and width, or neither
    window_width: Optional[float] = None  # CT window width in HU
    nifti_axis: int = 2  # slicing axis after canonical (RAS) reorientation; 2 = axial
    nifti_volume: int = 0  # which volume of a 4D NIfTI
    labels_from_folders: bool = False  # PNG/JPEG: label = index of the sorted sub-folder name
    slice_stride: int = 1  # keep every n-th slice of a volume

    def validate(self, origin: str, key: str) -> None:
        """Value checks; `key` is where these options sit (`shard.defaults`, `shard.sources.NAME`)."""
        check(self.nifti_axis in (0, 1, 2), origin, f"{key}.nifti_axis", "0, 1 or 2", self.nifti_axis)
        check(self.nifti_volume >= 0, origin, f"{key}.nifti_volume", "an int >= 0", self.nifti_volume)
        check(self.slice_stride >= 1, origin, f"{key}.slice_stride", "an int >= 1", self.slice_stride)
        has_c, has_w = self.window_center is not None, self.window_width is not None
        check(has_c == has_w, origin, f"{key}.window_width", "set together with window_center", self.window_width)
        check(not has_w or self.window_width > 0, origin, f"{key}.window_width", "a width > 0", self.window_width)


@dataclass
class ShardConfig:
    """The sharding service (`medscale shard`)."""

    inputs: List[str] = field(default_factory=list)  # paths or URLs (local, s3://), optionally NAME=PATH
    output: Optional[str] = None  # the corpus folder (or s3://): shards, .idx files, manifest.parquet/, corpus.json
    prefix: str = "shard"  # shard file names: PREFIX-000000.tar
    shard_size: int = 1000  # samples per shard
    shard_bytes: int = 256 * 1024 * 1024  # a shard is cut at whichever limit comes first
    bit_depth: int = 8  # 8 or 16-bit PNG for grey images (colour stays 8-bit)
    max_size: Optional[int] = None  # resize so that the longer side is at most this
    png_compress_level: int = 1  # zlib level 0-9: 1 is ~3x faster than 6 for ~10% more bytes
    files_per_unit: int = 0  # image files per Ray task; 0 = shard_size
    executor: str = "auto"  # auto (a local process pool for small work, else Ray) | ray | pool | local (in-process)
    ray_address: Optional[str] = None  # None starts a local Ray; "auto" or "ray://..." joins a cluster
    num_cpus: Optional[int] = None  # for a local Ray; None = all cores
    max_in_flight: int = 0  # tasks submitted at once; 0 = 2 x CPUs (bounds memory)
    task_memory_mb: Optional[int] = None  # Ray: memory (MiB) each task reserves: a node runs only as many as fit
    progress: bool = True  # progress bars on standard error
    retries: int = 3  # retries of a unit after a transient fault (network, throttling), waiting 1, 2, 4... s
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options (e.g. S3 endpoint); never logged
    reduce: Optional[str] = None  # hash-volume: drop Less-is-More duplicates while sharding (recorded, not written)
    reduce_hash: str = "dhash"  # ahash | dhash | phash
    reduce_threshold: int = 6  # Hamming distance (bits of 64) at or under which slices are duplicates
    defaults: SourceOptions = field(default_factory=SourceOptions)
    sources: Dict[str, SourceOptions] = field(default_factory=dict)  # one source's own options, by its NAME

    def validate(self, origin: str) -> None:
        """Value checks that types alone cannot express (`shard.reduce` is checked by the root, which knows the
        reducers dedup offers)."""
        check(self.shard_size >= 1, origin, "shard.shard_size", "an int >= 1", self.shard_size)
        check(self.shard_bytes >= 1024, origin, "shard.shard_bytes", "an int >= 1024", self.shard_bytes)
        check(self.bit_depth in (8, 16), origin, "shard.bit_depth", "8 or 16", self.bit_depth)
        check(self.max_size is None or self.max_size >= 8, origin, "shard.max_size", "null or an int >= 8",
              self.max_size)
        check(0 <= self.png_compress_level <= 9, origin, "shard.png_compress_level", "0..9", self.png_compress_level)
        check(self.files_per_unit >= 0, origin, "shard.files_per_unit", "an int >= 0", self.files_per_unit)
        check_choice(self.executor, EXECUTOR_CHOICES, origin, "shard.executor")
        check(self.retries >= 0, origin, "shard.retries", "an int >= 0", self.retries)
        check(self.max_in_flight >= 0, origin, "shard.max_in_flight", "an int >= 0", self.max_in_flight)
        check(self.task_memory_mb is None or self.task_memory_mb >= 1, origin, "shard.task_memory_mb",
              "null or an int >= 1 (MiB)", self.task_memory_mb)
        check("/" not in self.prefix and "." not in self.prefix and self.prefix != "", origin, "shard.prefix",
              "a name without '/' or '.'", self.prefix)
        check_choice(self.reduce_hash, HASH_NAMES, origin, "shard.reduce_hash")
        check(0 <= self.reduce_threshold < 32, origin, "shard.reduce_threshold", "0..31", self.reduce_threshold)
        self.defaults.validate(origin, "shard.defaults")
        for name, opts in self.sources.items():
            opts.validate(origin, f"shard.sources.{name}")

    def source_options(self, source: str) -> SourceOptions:
        """The options of `source`: its own entry in `sources`, else `defaults`."""
        return self.sources.get(source, self.defaults)


@dataclass
class LoaderConfig:
    """How trainers read shards (`medscale.data.create_loader`)."""

    loader: str = "auto"  # auto (DALI when a GPU and kept-only shards are there) | torch | dali
    batch_size: int = 64  # samples per batch per rank
    num_workers: int = 2  # torch loader processes
    seed: int = 0  # the epoch order's and the augmentations' seed
    shuffle: bool = True  # shuffle shards and samples each epoch (reproducibly, from the seed)
    shuffle_window: int = 4096  # torch: samples shuffled together after the shard permutation
    remainder: str = "pad"  # pad | drop | uneven: when samples do not divide by the world size
    augment: Optional[str] = None  # mae | contrastive | resize; null: what the trainer's method needs (else mae)
    image_size: int = 224  # the side of the (square) crops the trainer sees
    small_crops: Optional[int] = None  # contrastive: extra small views (SwAV multi-crop); null: the method's (else 0)
    small_size: int = 96  # the side of the small views (SwAV's multi-crop)
    channels: Optional[int] = None  # 1 or 3 channels per image; null: the trainer's train.in_chans (else 3)
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # contrastive views: area range of the crop
    small_crop_scale: List[float] = field(default_factory=lambda: [0.05, 0.14])  # small views' area range
    device: str = "auto"  # DALI decoding: auto | gpu | cpu
    source_weights: Dict[str, float] = field(default_factory=dict)  # torch loader: source -> weight (1 if absent)
    batch_dtype: str = "auto"  # torch loader: float32 (normalised in workers) | uint8 (normalised by the trainer on
    # its device) | auto (the trainer picks uint8 on GPUs, float32 on CPU; float32 elsewhere)
    cache_dir: Optional[str] = None  # where remote shards are copied
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options; never logged

    def validate(self, origin: str) -> None:
        """Value checks that types alone cannot express."""
        check_choice(self.loader, LOADERS, origin, "loader.loader")
        check(self.batch_size >= 1, origin, "loader.batch_size", "an int >= 1", self.batch_size)
        check(self.num_workers >= 0, origin, "loader.num_workers", "an int >= 0", self.num_workers)
        check(self.shuffle_window >= 1, origin, "loader.shuffle_window", "an int >= 1", self.shuffle_window)
        check_choice(self.remainder, REMAINDERS, origin, "loader.remainder")
        check(self.augment is None or self.augment in AUGMENTS, origin, "loader.augment",
              "null or " + " | ".join(AUGMENTS), self.augment)
        check(self.image_size >= 8, origin, "loader.image_size", "an int >= 8", self.image_size)
        check(self.small_size >= 8, origin, "loader.small_size", "an int >= 8", self.small_size)
        check(self.channels in (None, 1, 3), origin, "loader.channels", "null, 1 or 3", self.channels)
        check(self.small_crops is None or self.small_crops >= 0, origin, "loader.small_crops", "null or an int >= 0",
              self.small_crops)
        for key in ("crop_scale", "small_crop_scale"):
            lo_hi = getattr(self, key)
            check(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1, origin, f"loader.{key}",
                  "two numbers 0 < low <= high <= 1", lo_hi)
        check_choice(self.device, DALI_DEVICES, origin, "loader.device")
        check_choice(self.batch_dtype, BATCH_DTYPES, origin, "loader.batch_dtype")
        for name, weight in self.source_weights.items():
            check(weight > 0, origin, f"loader.source_weights.{name}", "a weight > 0", weight)

    def for_model(self, augment: str, small_crops: int, channels: int) -> "LoaderConfig":
        """A copy whose unset `augment`, `small_crops` and `channels` are those given (what a trainer's method and
        model need)."""
        def keep(value, default):
            return value if value is not None else default

        return dataclasses.replace(self, augment=keep(self.augment, augment),
                                   small_crops=keep(self.small_crops, small_crops),
                                   channels=keep(self.channels, channels))
