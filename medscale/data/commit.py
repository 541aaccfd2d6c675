"""The commit protocol of a sharded output: the only way shards are added to one (sharding, `--write-kept`).

0. `Lease` (core) first: one writer per output.
1. `open_output(fs, root, prefix, lock)` on every (re)start: reads what is committed, and removes staged leftovers and
   final-named shards that no manifest part names (a run killed mid-commit). Returns the state and a committer.
2. Workers write a unit's shards with `StagedShards` into `ROOT/_staging/UNIT/NNNN.tar` (its `.idx` first, so a
   staged tar always has its index).
3. The driver's `ShardCommitter.commit(rows, staged)` renames staged shards to the next `PREFIX-NNNNNN.tar` names,
   then writes the manifest part naming them: that part is the commit record. A shard is visible only complete.
4. `close_output(fs, root)` removes the empty staging folder.
Nothing is ever overwritten: a final shard name or manifest part that exists is an error (another writer), and
the output's `Lease` keeps to one writer per output.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from fsspec import AbstractFileSystem

from medscale.core.lease import Lease
from medscale.core.storage import filesystem, is_local, join, move, put_bytes_atomic, put_file_atomic
from medscale.data.manifest import CommittedState, committed_state, mark_corpus_format, write_part
from medscale.data.shards import ShardInfo, ShardWriter, idx_name, shard_name

logger = logging.getLogger(__name__)
STAGING_DIR = "_staging"


class StagedShards:
    """One unit's shards, written into `OUTPUT/_staging/UNIT/` (worker side). Use as a context manager: an error
    drops the open shard, a clean exit finishes it."""

    def __init__(self, output_url: str, storage_options: Mapping[str, Any], unit_id: str, shard_size: int,
                 shard_bytes: int) -> None:
        self._fs, root = filesystem(output_url, storage_options)
        self._dir = join(root, STAGING_DIR, unit_id)
        local_tmp = self._dir if is_local(self._fs) else None
        if local_tmp:
            os.makedirs(local_tmp, exist_ok=True)
        self.staged: List[str] = []  # staged tar paths on the output store, in order; `.idx` beside each
        self._writer = ShardWriter(self._on_shard, shard_size, shard_bytes, tmp_dir=local_tmp)

    def _on_shard(self, info: ShardInfo) -> None:
        path = join(self._dir, f"{len(self.staged):04d}.tar")
        put_bytes_atomic(self._fs, path[:-4] + ".idx", info.idx_bytes)
        put_file_atomic(self._fs, info.local_path, path)  # the tar last: a staged tar always has its index
        self.staged.append(path)

    def write(self, key: str, members: Dict[str, bytes]) -> int:
        """Add one sample; returns the index (among this unit's staged shards) of the shard it lands in."""
        self._writer.write(key, members)
        return len(self.staged)  # after write(): the shards finished so far number the one this sample is in

    def __enter__(self) -> "StagedShards":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._writer.close()
        else:
            self._writer.abort()


class ShardCommitter:
    """Moves staged shards to their final names and writes the manifest part that commits them (driver side)."""

    def __init__(self, fs: AbstractFileSystem, root: str, prefix: str, next_shard: int, next_part: int,
                 lock: Optional[Lease] = None) -> None:
        self.fs, self.root, self.prefix = fs, root, prefix
        self.next_shard, self.next_part = next_shard, next_part
        self.lock = lock

    def commit(self, rows: List[Dict], staged: List[str]) -> List[str]:
        """Final shard names for `staged`, in order; rows' staged shard indices become those names. Rows with no
        staged shards (quarantined inputs, decisions) are committed the same way."""
        if self.lock is not None:
            self.lock.check()
        names = []
        for path in staged:
            name = shard_name(self.prefix, self.next_shard)
            self.next_shard += 1
            move(self.fs, path[:-4] + ".idx", join(self.root, idx_name(name)), overwrite=False)
            move(self.fs, path, join(self.root, name), overwrite=False)
            names.append(name)
        for row in rows:
            if isinstance(row.get("shard"), int):
                row["shard"] = names[row["shard"]]
        if rows:
            write_part(self.fs, self.root, self.next_part, rows)  # the commit point
            self.next_part += 1
        return names

    def drop_staging(self, unit_id: str) -> None:
        """Remove a committed unit's (now empty) staging folder; object stores have no folders to remove."""
        path = join(self.root, STAGING_DIR, unit_id)
        if is_local(self.fs) and self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def clean_orphans(fs: AbstractFileSystem, root: str, prefix: str, committed: set) -> int:
    """Remove staged leftovers and shards that no manifest part names (a run killed mid-commit)."""
    removed = 0
    staging = join(root, STAGING_DIR)
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    for path in fs.glob(join(root, f"{prefix}-*.tar")) + fs.glob(join(root, f"{prefix}-*.idx")):
        name = path.rsplit("/", 1)[-1]
        if name[:-4] + ".tar" not in committed:
            fs.rm_file(path)
            removed += 1
    return removed


def open_output(fs: AbstractFileSystem, root: str, prefix: str, lock: Lease
                ) -> Tuple[CommittedState, ShardCommitter]:
    """What is committed under `root`, with orphans of an interrupted run removed, and a committer that goes on
    from there (checking before each commit that this run still holds `lock`, taken first)."""
    state = committed_state(fs, root, prefix)
    mark_corpus_format(fs, root)
    orphans = clean_orphans(fs, root, prefix, state.shards)
    if orphans:
        logger.info("removed %d uncommitted shard files left by an interrupted run", orphans)
    return state, ShardCommitter(fs, root, prefix, state.next_shard, state.parts, lock)


def close_output(fs: AbstractFileSystem, root: str) -> None:
    """Remove the staging folder once empty (local disks; object stores have no folders)."""
    staging = join(root, STAGING_DIR)
    if is_local(fs) and fs.exists(staging) and not fs.ls(staging):
        fs.rm(staging, recursive=True)
