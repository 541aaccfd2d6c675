"""The Parquet manifest: one row per sample or quarantined input, written as atomic parts under `manifest.parquet/`;
`corpus.json` beside it holds the corpus's format version (`core/formats.py`; a corpus without it is version 1)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from medscale.core.errors import InputError, ShardFormatError
from medscale.core.formats import FORMAT_KEY, check_format
from medscale.core.storage import full_url, join, put_bytes_atomic
from medscale.hashing.hashes import HASH_NAMES

MANIFEST_DIR = "manifest.parquet"
CORPUS_FILE = "corpus.json"
CORPUS_FORMAT = 1  # the corpus format (manifest schema, shard layout) this medscale writes and reads up to
KEPT, DUPLICATE, EXCLUDED, QUARANTINED = "kept", "duplicate", "excluded", "quarantined"
HASH_COLUMNS = HASH_NAMES  # one uint64 column per registered perceptual hash

SCHEMA = pa.schema([
    ("key", pa.string()),  # sample key; null for a quarantined input
    ("shard", pa.string()),  # shard file name relative to the output URL
    ("status", pa.string()),  # kept | duplicate (of `duplicate_of`) | excluded (contamination) | quarantined
    ("reason", pa.string()),  # why an input was quarantined
    ("source", pa.string()),
    ("kind", pa.string()),  # dicom | nifti | image | npz
    ("modality", pa.string()),
    ("body_part", pa.string()),
    ("path", pa.string()),  # the input file
    ("volume", pa.string()),  # volume id (series / NIfTI file); null for 2D images
    ("slice", pa.int32()),  # index in anatomical order within the volume
    ("position", pa.float64()),  # mm along the slice normal, when known
    ("frame", pa.int32()),  # frame within a multi-frame file, row within an npz split
    ("split", pa.string()),  # npz split (train/val/test)
    ("label", pa.int64()),
    ("label_name", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("channels", pa.int8()),
    ("bits", pa.int8()),
    ("bytes", pa.int64()),  # size of the stored PNG
    ("spacing", pa.list_(pa.float64())),
    ("series_uid", pa.string()),
    ("study_uid", pa.string()),
    ("unit", pa.string()),  # the work unit that produced the row (resume bookkeeping)
    # 64-bit perceptual hashes of the stored slice (imagehash's bits, hex = its string): ahash, dhash, phash
    *[(name, pa.uint64()) for name in HASH_COLUMNS],
    ("duplicate_of", pa.string()),  # the exemplar KEY (duplicate) or the evaluation image (excluded)
    ("dedup_strategy", pa.string()),  # which reduction decided the status, with its parameters
    ("dedup_distance", pa.float32()),  # Hamming bits or cosine distance to the exemplar
])


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts; missing columns are null) -> a table in the manifest schema."""
    columns = {name: [row.get(name) for row in rows] for name in SCHEMA.names}
    return pa.table(columns, schema=SCHEMA)


def write_part(fs: AbstractFileSystem, root: str, part: int, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write one manifest part atomically (it is the commit record of the shards it names); returns its path."""
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows), buf, compression="zstd")
    path = join(root, MANIFEST_DIR, f"part-{part:06d}.parquet")
    put_bytes_atomic(fs, path, buf.getvalue(), overwrite=False)  # a part is never replaced: it is a commit
    return path


def list_parts(fs: AbstractFileSystem, root: str) -> List[str]:
    """Committed part files, in commit order (temp files start with '.' and are ignored, as pyarrow does)."""
    directory = join(root, MANIFEST_DIR)
    if not fs.exists(directory):
        return []
    names = [p for p in fs.ls(directory, detail=False) if p.rsplit("/", 1)[-1].startswith("part-")]
    return sorted(names)


def corpus_format(fs: AbstractFileSystem, root: str) -> int:
    """The format version of the corpus at `root` (1 without `corpus.json`); a FormatError for a newer one."""
    path = join(root, CORPUS_FILE)
    try:
        text = fs.cat_file(path)
    except FileNotFoundError:
        return 1
    try:
        found = json.loads(text).get(FORMAT_KEY)
    except (ValueError, AttributeError):
        found = text[:40]
    return check_format(found, CORPUS_FORMAT, full_url(fs, path), "corpus")


def mark_corpus_format(fs: AbstractFileSystem, root: str) -> None:
    """Write `corpus.json` with this medscale's corpus format, where there is none yet (a writer opening it)."""
    corpus_format(fs, root)  # a newer corpus is refused before anything is added to it
    if not fs.exists(join(root, CORPUS_FILE)):
        put_bytes_atomic(fs, join(root, CORPUS_FILE), json.dumps({FORMAT_KEY: CORPUS_FORMAT}).encode())


def read_manifest(fs: AbstractFileSystem, root: str, columns: Optional[List[str]] = None) -> pa.Table:
    """The whole manifest (all parts) as one table; an empty table in the schema when nothing is committed."""
    parts = list_parts(fs, root)
    if not parts:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    corpus_format(fs, root)
    try:
        return pads.dataset(parts, filesystem=fs, format="parquet", schema=SCHEMA).to_table(columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardFormatError(f"manifest under {root}/{MANIFEST_DIR} is unreadable ({exc}); "
                               "remove the damaged part file named above and rerun to redo its inputs") from exc


@dataclass
class CommittedState:
    """What a previous run committed: enough to resume, skip finished work, and find orphans."""

    parts: int = 0
    done_units: Set[str] = field(default_factory=set)
    done_paths: Set[str] = field(default_factory=set)  # files fully handled (npz files are tracked per unit)
    shards: Set[str] = field(default_factory=set)
    next_shard: int = 0
    samples: int = 0
    quarantined: int = 0


def committed_state(fs: AbstractFileSystem, root: str, prefix: str) -> CommittedState:
    """Read the manifest's bookkeeping columns into a `CommittedState`."""
    table = read_manifest(fs, root, columns=["status", "path", "kind", "shard", "unit"])
    parts = [int(p.rsplit("/", 1)[-1][len("part-"):].split(".")[0]) for p in list_parts(fs, root)]
    state = CommittedState(parts=max(parts) + 1 if parts else 0)  # the next part number: gaps are fine
    cols: Dict[str, list] = table.to_pydict()
    for status, path, kind, shard, unit in zip(cols["status"], cols["path"], cols["kind"], cols["shard"], cols["unit"]):
        if unit:
            state.done_units.add(unit)
        if path and (kind != "npz" or (status == QUARANTINED and not unit)):
            state.done_paths.add(path)  # an npz is done per unit (row range), unless the whole file was rejected
        if shard:
            state.shards.add(shard)
        if status == QUARANTINED:
            state.quarantined += 1
        elif shard:
            state.samples += 1
    indices = [int(s[len(prefix) + 1: -4]) for s in state.shards if s.startswith(prefix + "-")]
    state.next_shard = max(indices) + 1 if indices else 0
    return state


def update_rows(fs: AbstractFileSystem, root: str, updates: pa.Table) -> int:
    """Set columns of existing rows, matched by `key`, part by part (each part rewritten atomically); returns
    the number of rows changed. `updates` has a `key` column and any manifest columns; shards are untouched."""
    columns = [c for c in updates.column_names if c != "key"]
    unknown = [c for c in columns if c not in SCHEMA.names]
    if unknown:
        raise ValueError(f"not manifest columns: {unknown}")
    updates = updates.cast(pa.schema([SCHEMA.field(c) for c in updates.column_names]))
    changed = 0
    for path in list_parts(fs, root):
        with fs.open(path, "rb") as fh:
            part = pq.read_table(fh, schema=SCHEMA)
        index = pc.index_in(part["key"], value_set=updates["key"])
        hit = pc.is_valid(index)
        count = pc.sum(hit).as_py() or 0
        if not count:
            continue
        taken = pc.fill_null(index, 0)
        for name in columns:
            new = pc.take(updates[name], taken)
            part = part.set_column(part.schema.get_field_index(name), SCHEMA.field(name),
                                   pc.if_else(hit, new, part[name]))
        buf = io.BytesIO()
        pq.write_table(part, buf, compression="zstd")
        put_bytes_atomic(fs, path, buf.getvalue())
        changed += count
    return changed


def kept_rows(fs: AbstractFileSystem, root: str, url: str, columns: List[str]) -> pa.Table:
    """The manifest's rows a trainer reads (status kept, in a shard), or an InputError naming `url` when it is not
    a corpus or nothing of it is kept."""
    if not fs.exists(root):
        raise InputError(f"{url} does not exist; pass the output folder (or s3://...) of `medscale shard`")
    table = read_manifest(fs, root, columns=columns)
    table = table.filter(pc.and_(pc.equal(table["status"], KEPT), pc.is_valid(table["shard"])))
    if not len(table):
        raise InputError(f"{url}: no kept samples in {url}/{MANIFEST_DIR}; is this a `medscale shard` output, and "
                         "did dedup or contamination exclude everything?")
    return table


def keys_digest(keys: Iterable[str]) -> Tuple[str, int]:
    """(digest, count) of the sample keys a trainer reads, in any order: a dedup or contamination rerun that
    changes the kept set changes the digest. Recorded in checkpoints and exported cards; the loaders take it from
    their own index."""
    ordered = sorted(keys)
    return hashlib.sha1("\n".join(ordered).encode()).hexdigest()[:16], len(ordered)


def kept_digest(fs: AbstractFileSystem, root: str, url: str) -> Tuple[str, int]:
    """`keys_digest` of the manifest's kept rows (a pre-flight check); an InputError as `kept_rows` says."""
    return keys_digest(kept_rows(fs, root, url, ["key", "shard", "status"])["key"].to_pylist())


def check_corpus(fs: AbstractFileSystem, root: str, url: str) -> None:
    """A cheap check that `url` is a corpus with samples to train on (its status column only): an InputError
    naming it otherwise, before a trainer starts anything. What it holds is read by the loader, once."""
    kept_rows(fs, root, url, ["shard", "status"])
