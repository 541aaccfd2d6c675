"""Typed run configuration: dataclass defaults, merged with one YAML file, then `section.key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medscale.core.errors import ConfigError

HASH_NAMES = ("ahash", "dhash", "phash")
STRATEGY_NAMES = ("hash-volume", "hash-global", "embedding", "every-n")


@dataclass
class SourceOptions:
    """How one input source is read; `shard.defaults` applies to all, `shard.sources.NAME` to one."""

    modality: Optional[str] = None  # overrides the detected modality (npz/png/NIfTI carry none)
    window_center: Optional[float] = None  # CT window in HU; both center and width, or neither
    window_width: Optional[float] = None
    nifti_axis: int = 2  # slicing axis after canonical (RAS) reorientation; 2 = axial
    nifti_volume: int = 0  # which volume of a 4D NIfTI
    labels_from_folders: bool = False  # PNG/JPEG: label = index of the sorted sub-folder name
    slice_stride: int = 1  # keep every n-th slice of a volume


@dataclass
class ShardConfig:
    """The sharding service (`medscale shard`)."""

    inputs: List[str] = field(default_factory=list)
    output: Optional[str] = None
    prefix: str = "shard"
    shard_size: int = 1000  # samples per shard
    shard_bytes: int = 256 * 1024 * 1024  # a shard is cut at whichever limit comes first
    bit_depth: int = 8  # 8 or 16-bit PNG for grey images (colour stays 8-bit)
    max_size: Optional[int] = None  # resize so that the longer side is at most this
    png_compress_level: int = 1  # zlib level 0-9: 1 is ~3x faster than 6 for ~10% more bytes
    files_per_unit: int = 0  # image files per Ray task; 0 = shard_size
    executor: str = "ray"  # ray | local (in-process, for debugging and tiny corpora)
    ray_address: Optional[str] = None  # None starts a local Ray; "auto" or "ray://..." joins a cluster
    num_cpus: Optional[int] = None  # for a local Ray; None = all cores
    max_in_flight: int = 0  # tasks submitted at once; 0 = 2 x CPUs (bounds memory)
    progress: bool = True
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options (e.g. S3 endpoint); never logged
    reduce: Optional[str] = None  # hash-volume: drop Less-is-More duplicates while sharding (recorded, not written)
    reduce_hash: str = "dhash"  # ahash | dhash | phash
    reduce_threshold: int = 6  # Hamming distance (bits of 64) at or under which slices are duplicates
    defaults: SourceOptions = field(default_factory=SourceOptions)
    sources: Dict[str, SourceOptions] = field(default_factory=dict)


@dataclass
class DedupConfig:
    """Corpus reduction and the contamination check (`medscale dedup`)."""

    strategy: str = "hash-volume"  # hash-volume | hash-global | embedding | every-n
    hash: str = "dhash"  # ahash | dhash | phash (64-bit, from the manifest)
    threshold: int = 6  # Hamming distance at or under which two slices are near-duplicates (Hash-6)
    every_n: int = 2  # every-n: keep slices 0, n, 2n... of each volume
    lsh_recall: float = 0.995  # hash-global / contamination: expected recall of pairs at `threshold`
    lsh_seed: int = 0
    verify: Optional[str] = None  # hash-global / contamination: also require e.g. "dhash+ahash<=16"
    groups: str = "star"  # hash-global: star (each duplicate within threshold of its exemplar) | connected
    embeddings: Optional[str] = None  # embedding: Parquet with `key` and `embedding` (list of floats)
    backbone: Optional[str] = None  # embedding: an exported backbone folder (card.json + backbone.safetensors)
    eps: float = 0.05  # embedding: duplicates when cosine similarity > 1 - eps
    clusters: int = 0  # embedding: k-means clusters; 0 = about sqrt(N)
    against: List[str] = field(default_factory=list)  # evaluation sets for the contamination check
    exclude: bool = False  # contamination: mark corpus samples near an evaluation image as excluded
    dry_run: bool = False  # report only; leave the manifest as it is
    examples: int = 6  # duplicate groups drawn in the report's PNG grid
    executor: str = "ray"  # ray | local
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None
    progress: bool = True
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options; never logged


@dataclass
class LoaderConfig:
    """How trainers read shards (`medscale.data.create_loader`)."""

    loader: str = "auto"  # auto (DALI when a GPU and kept-only shards are there) | torch | dali
    batch_size: int = 64
    num_workers: int = 2  # torch loader processes
    seed: int = 0
    shuffle: bool = True
    shuffle_window: int = 4096  # torch: samples shuffled together after the shard permutation
    remainder: str = "pad"  # pad | drop | uneven: when samples do not divide by the world size
    augment: str = "mae"  # mae | contrastive | resize
    image_size: int = 224
    small_crops: int = 0  # contrastive: extra small views (SwAV multi-crop)
    small_size: int = 96
    device: str = "auto"  # DALI decoding: auto | gpu | cpu
    cache_dir: Optional[str] = None  # where remote shards are copied
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options; never logged


@dataclass
class MedscaleConfig:
    """One run; each stage reads its own section."""

    shard: ShardConfig = field(default_factory=ShardConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)


def _expected_type(full_key: str) -> Optional[str]:
    """The declared type of a dotted key, read off the dataclasses (`shard.sources.ct.nifti_axis` -> 'int')."""
    cls: Any = MedscaleConfig
    parts = full_key.split(".")
    i = 0
    while i < len(parts) and dataclasses.is_dataclass(cls):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if parts[i] not in fields:
            return None
        cls = fields[parts[i]].type
        cls = eval(cls, globals()) if isinstance(cls, str) else cls  # postponed annotations
        if getattr(cls, "__origin__", None) in (dict, Dict) and i + 1 < len(parts):
            cls = cls.__args__[1]
            i += 1  # skip the free-form dict key (a source name)
        i += 1
    return str(cls).replace("typing.", "") if not isinstance(cls, type) else cls.__name__


def _describe(error: OmegaConfBaseException, origin: str) -> str:
    key = getattr(error, "full_key", None) or "?"
    msg = str(getattr(error, "msg", error)).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return f"{origin}: unknown key '{key}'. Check the spelling against `medscale config` or the README."
    expected = _expected_type(key)
    return f"{origin}: bad value for key '{key}'" + (f" (expected {expected})" if expected else "") + f": {msg}"


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> MedscaleConfig:
    """Defaults <- YAML file at `path` <- `section.key=value` overrides; validated, or ConfigError naming the key."""
    cfg = OmegaConf.structured(MedscaleConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file (see configs/).")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (e.g. `shard:`).")
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as exc:
            raise ConfigError(_describe(exc, str(path))) from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. shard.shard_size=500).")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(_describe(exc, f"override '{item}'")) from exc
    result: MedscaleConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(result, origin=str(path) if path else "config")
    return result


def _check(ok: bool, origin: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{origin}: bad value for key '{key}': {value!r}; expected {expected}.")


def _validate_source(opts: SourceOptions, origin: str, key: str) -> None:
    _check(opts.nifti_axis in (0, 1, 2), origin, f"{key}.nifti_axis", "0, 1 or 2", opts.nifti_axis)
    _check(opts.nifti_volume >= 0, origin, f"{key}.nifti_volume", "an int >= 0", opts.nifti_volume)
    _check(opts.slice_stride >= 1, origin, f"{key}.slice_stride", "an int >= 1", opts.slice_stride)
    has_c, has_w = opts.window_center is not None, opts.window_width is not None
    _check(has_c == has_w, origin, f"{key}.window_width", "set together with window_center", opts.window_width)
    _check(not has_w or opts.window_width > 0, origin, f"{key}.window_width", "a width > 0", opts.window_width)


def validate(cfg: MedscaleConfig, origin: str = "config") -> None:
    """Value checks that types alone cannot express; raises ConfigError naming the key."""
    s = cfg.shard
    _check(s.shard_size >= 1, origin, "shard.shard_size", "an int >= 1", s.shard_size)
    _check(s.shard_bytes >= 1024, origin, "shard.shard_bytes", "an int >= 1024", s.shard_bytes)
    _check(s.bit_depth in (8, 16), origin, "shard.bit_depth", "8 or 16", s.bit_depth)
    _check(s.max_size is None or s.max_size >= 8, origin, "shard.max_size", "null or an int >= 8", s.max_size)
    _check(0 <= s.png_compress_level <= 9, origin, "shard.png_compress_level", "0..9", s.png_compress_level)
    _check(s.files_per_unit >= 0, origin, "shard.files_per_unit", "an int >= 0", s.files_per_unit)
    _check(s.executor in ("ray", "local"), origin, "shard.executor", "'ray' or 'local'", s.executor)
    _check(s.max_in_flight >= 0, origin, "shard.max_in_flight", "an int >= 0", s.max_in_flight)
    _check("/" not in s.prefix and "." not in s.prefix and s.prefix != "", origin, "shard.prefix",
           "a name without '/' or '.'", s.prefix)
    _check(s.reduce in (None, "hash-volume"), origin, "shard.reduce", "null or 'hash-volume'", s.reduce)
    _check(s.reduce_hash in HASH_NAMES, origin, "shard.reduce_hash", " | ".join(HASH_NAMES), s.reduce_hash)
    _check(0 <= s.reduce_threshold < 32, origin, "shard.reduce_threshold", "0..31", s.reduce_threshold)
    _validate_source(s.defaults, origin, "shard.defaults")
    for name, opts in s.sources.items():
        _validate_source(opts, origin, f"shard.sources.{name}")
    _validate_dedup(cfg.dedup, origin)
    _validate_loader(cfg.loader, origin)


def parse_verify(spec: str, names: Tuple[str, ...] = HASH_NAMES) -> Tuple[Tuple[str, ...], int]:
    """`"dhash+ahash<=16"` -> (("dhash", "ahash"), 16): a pair also needs the summed distance of these hashes."""
    try:
        left, bound = spec.replace(" ", "").split("<=")
        hashes, limit = tuple(left.split("+")), int(bound)
    except ValueError:
        raise ValueError(f"verify rule {spec!r} must look like 'dhash+ahash<=16'") from None
    unknown = [h for h in hashes if h not in names]
    if unknown or limit < 0:
        raise ValueError(f"verify rule {spec!r}: hashes must be among {', '.join(names)} and the bound >= 0")
    return hashes, limit


def _validate_dedup(d: DedupConfig, origin: str) -> None:
    _check(d.strategy in STRATEGY_NAMES, origin, "dedup.strategy", " | ".join(STRATEGY_NAMES), d.strategy)
    _check(d.hash in HASH_NAMES, origin, "dedup.hash", " | ".join(HASH_NAMES), d.hash)
    _check(0 <= d.threshold < 32, origin, "dedup.threshold", "0..31 (bits of a 64-bit hash)", d.threshold)
    _check(d.groups in ("star", "connected"), origin, "dedup.groups", "'star' or 'connected'", d.groups)
    if d.verify is not None:
        try:
            parse_verify(d.verify, HASH_NAMES)
        except ValueError as exc:
            raise ConfigError(f"{origin}: bad value for key 'dedup.verify': {exc}") from None
    _check(d.every_n >= 1, origin, "dedup.every_n", "an int >= 1", d.every_n)
    _check(0.0 < d.lsh_recall < 1.0, origin, "dedup.lsh_recall", "a number in (0, 1)", d.lsh_recall)
    _check(0.0 <= d.eps < 1.0, origin, "dedup.eps", "a number in [0, 1)", d.eps)
    _check(d.clusters >= 0, origin, "dedup.clusters", "an int >= 0", d.clusters)
    _check(d.examples >= 0, origin, "dedup.examples", "an int >= 0", d.examples)
    _check(d.executor in ("ray", "local"), origin, "dedup.executor", "'ray' or 'local'", d.executor)


def _validate_loader(c: LoaderConfig, origin: str) -> None:
    _check(c.loader in ("auto", "torch", "dali"), origin, "loader.loader", "auto | torch | dali", c.loader)
    _check(c.batch_size >= 1, origin, "loader.batch_size", "an int >= 1", c.batch_size)
    _check(c.num_workers >= 0, origin, "loader.num_workers", "an int >= 0", c.num_workers)
    _check(c.shuffle_window >= 1, origin, "loader.shuffle_window", "an int >= 1", c.shuffle_window)
    _check(c.remainder in ("pad", "drop", "uneven"), origin, "loader.remainder", "pad | drop | uneven", c.remainder)
    _check(c.augment in ("mae", "contrastive", "resize"), origin, "loader.augment", "mae | contrastive | resize",
           c.augment)
    _check(c.image_size >= 8 and c.small_size >= 8, origin, "loader.image_size", "an int >= 8", c.image_size)
    _check(c.device in ("auto", "gpu", "cpu"), origin, "loader.device", "auto | gpu | cpu", c.device)


def source_options(cfg: ShardConfig, source: str) -> SourceOptions:
    """The options of `source`: its own entry in `shard.sources`, else `shard.defaults`."""
    return cfg.sources.get(source, cfg.defaults)


def to_yaml(cfg: MedscaleConfig, redact: bool = True) -> str:
    """The resolved config as YAML; storage options (credentials) are redacted unless asked."""
    data = dataclasses.asdict(cfg)
    for section in ("shard", "dedup", "loader"):
        if redact and data[section]["storage_options"]:
            data[section]["storage_options"] = {k: "<redacted>" for k in data[section]["storage_options"]}
    return OmegaConf.to_yaml(OmegaConf.create(data))
