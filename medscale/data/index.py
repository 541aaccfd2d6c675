"""Which samples a loader reads, and where: the manifest's kept rows joined with each shard's DALI `.idx` offsets."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from medscale.core.errors import InputError, ShardFormatError
from medscale.core.storage import filesystem, full_url, is_local, join
from medscale.data.manifest import kept_rows
from medscale.data.shards import check_shard_name, idx_name, member_name, parse_idx

HEADER = 512  # a ustar member header, just before the member data

logger = logging.getLogger(__name__)


@dataclass
class SampleIndex:
    """Every kept sample, numbered shard by shard in file order: `[N]` arrays and per-shard counts."""

    root_url: str
    shards: List[str]
    sizes: np.ndarray  # [S] kept samples per shard
    keys: np.ndarray  # [N] str
    shard_of: np.ndarray  # [N] shard number
    offsets: np.ndarray  # [N] byte offset of the PNG member in its shard
    lengths: np.ndarray  # [N] its size
    labels: np.ndarray  # [N] int64, -1 where there is none
    sources: np.ndarray  # [N] str: the source each sample came from (for `source_weights`)
    missing: int = 0  # manifest samples left out because their shard or index entry is gone (each logged)

    def __len__(self) -> int:
        return len(self.keys)


def load_index(url: str, storage_options: Optional[Mapping[str, Any]] = None, ext: str = "png") -> SampleIndex:
    """Read the manifest (status kept: dedup decisions honoured) and the `.idx` of every shard it names."""
    storage_options = dict(storage_options or {})
    fs, root = filesystem(url, storage_options)
    table = kept_rows(fs, root, url, ["key", "shard", "status", "label", "source"])
    labels = {k: (-1 if v is None else v) for k, v in zip(table["key"].to_pylist(), table["label"].to_pylist())}
    sources = dict(zip(table["key"].to_pylist(), table["source"].to_pylist()))
    by_shard: Dict[str, List[str]] = {}
    for key, shard in zip(table["key"].to_pylist(), table["shard"].to_pylist()):
        by_shard.setdefault(check_shard_name(shard), []).append(key)
    shards = sorted(by_shard)
    texts = fs.cat([join(root, idx_name(s)) for s in shards], on_error="return")
    keys, shard_of, offsets, lengths = [], [], [], []
    sizes = np.zeros(len(shards), np.int64)
    missing = 0
    for s, shard in enumerate(shards):
        raw = texts.get(join(root, idx_name(shard))) if isinstance(texts, dict) else None
        if raw is None or isinstance(raw, Exception):
            logger.error("%s: index %s is missing (%s): skipping its %d samples (e.g. %s)", url, idx_name(shard),
                         raw, len(by_shard[shard]), by_shard[shard][0])
            missing += len(by_shard[shard])
            continue
        members = parse_idx(raw.decode(), idx_name(shard))
        wanted = [k for k in by_shard[shard] if k in members and ext in members[k]]
        for k in sorted(set(by_shard[shard]) - set(wanted)):
            logger.error("%s/%s: sample %s has no .%s member: skipped", url, shard, k, ext)
        missing += len(by_shard[shard]) - len(wanted)
        wanted.sort(key=lambda k: members[k][ext][0])
        for k in wanted:
            keys.append(k)
            offsets.append(members[k][ext][0])
            lengths.append(members[k][ext][1])
        shard_of.extend([s] * len(wanted))
        sizes[s] = len(wanted)
    if not keys:
        raise InputError(f"{url}: none of the {len(table)} kept samples can be read (shards or indexes missing)")
    return SampleIndex(full_url(fs, root), shards, sizes, np.array(keys, dtype=object),
                       np.array(shard_of, np.int64), np.array(offsets, np.int64), np.array(lengths, np.int64),
                       np.array([labels[k] for k in keys], np.int64),
                       np.array([sources[k] or "" for k in keys], dtype=object), missing)


class ShardReader:
    """Reads one member by (shard, offset, size): local shards in place, remote ones copied once into a cache."""

    def __init__(self, root_url: str, storage_options: Optional[Mapping[str, Any]] = None,
                 cache_dir: Optional[str] = None, max_open: int = 8) -> None:
        self.fs, self.root = filesystem(root_url, dict(storage_options or {}))
        self.local = is_local(self.fs)
        self.cache_dir = cache_dir
        self.max_open = max_open
        self._handles: "OrderedDict[str, Any]" = OrderedDict()

    def _local_path(self, shard: str) -> str:
        if self.local:
            return join(self.root, shard)
        if self.cache_dir is None:
            self.cache_dir = tempfile.mkdtemp(prefix="medscale-shards-")
        path = os.path.join(self.cache_dir, shard)
        if not os.path.exists(path):  # several workers may race: each writes its own temp, rename is atomic
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-")
            os.close(fd)
            try:
                self.fs.get_file(join(self.root, shard), tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return path

    def read(self, shard: str, offset: int, size: int, member: str) -> bytes:
        """The bytes of the member named `member` (e.g. `KEY.png`) at `offset`; its tar header, read in the same
        call, must carry that name (the index and the shard must agree). Raises OSError / FileNotFoundError when
        the shard is gone, ShardFormatError when it does not match."""
        fh = self._handles.pop(shard, None)
        if fh is None:
            fh = open(self._local_path(check_shard_name(shard)), "rb")
            if len(self._handles) >= self.max_open:
                self._handles.popitem(last=False)[1].close()
        self._handles[shard] = fh
        if offset < HEADER:
            raise ShardFormatError(f"{shard}: index offset {offset} of {member} leaves no room for its tar header")
        fh.seek(offset - HEADER)
        raw = fh.read(HEADER + size)
        if len(raw) != HEADER + size:
            raise ShardFormatError(f"{shard}: member at {offset} is truncated ({len(raw) - HEADER} of {size} bytes)")
        if member_name(raw[:HEADER]) != member:
            raise ShardFormatError(f"{shard}: the index says {member} is at {offset}, the tar header there names "
                                   f"{member_name(raw[:HEADER])!r}; the shard and its index disagree")
        return raw[HEADER:]

    def close(self) -> None:
        """Close the open shard files."""
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()
