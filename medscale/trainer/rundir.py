"""A run directory and this node's working copy of it (the layout is `core/runs.py`'s contract).

A local run directory is the folder itself, shared by every node (a multi-node run on it needs a shared
filesystem). A remote one (`s3://...`, any fsspec URL) needs none: every node writes into its own staging folder
(`train.local_dir`, default `~/.cache/medscale/runs/<hash>/node-<first rank>`), its first process uploads what the
node wrote, rank 0 writes the COMPLETE marker last, and a resume downloads the checkpoint to every node. Logs,
TensorBoard events, pictures and the export are uploaded at every checkpoint and at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.distributed as dist
from fsspec import AbstractFileSystem

from medscale.core import errors
from medscale.core import runs as ck
from medscale.core.errors import MedscaleError, StorageError
from medscale.core.faults import describe, retrying
from medscale.core.lease import Lease
from medscale.core.storage import filesystem, full_url, is_local, join
from medscale.trainer.distributed import Dist, all_reduce_step, first_failure

logger = logging.getLogger(__name__)
# synced besides the checkpoints
RUN_FILES = (ck.CONFIG, ck.LOG, ck.LOSS_CURVE, ck.PREEMPTED, ck.TB, ck.IMAGES, ck.EXPORT)
PULLED = (ck.LOG, ck.TB, ck.IMAGES)  # brought back to a fresh node, so that they go on where they stopped
RETRIES = 3
LEASE_HEARTBEAT_S, LEASE_STALE_S = 15.0, 90.0  # a trainer lost on another machine frees its run directory in 90 s


def elastic_job() -> Optional[str]:
    """The elastic run id torchrun gives its workers (`--rdzv-id`), unless it is the unnamed default: a restarted
    worker group of the same job takes over its predecessor's lease."""
    job = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return job if job and job != "none" else None


def default_local_dir(url: str) -> Path:
    """Where a remote run is staged on this machine when `train.local_dir` is not set."""
    return Path.home() / ".cache" / "medscale" / "runs" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where source and target share a filesystem (a checkpoint costs no space twice), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class RunDir:
    """`local` is where this process reads and writes; `sync_*`, `fetch` and `commit` make the run directory
    whole. Every rank calls `fetch`, `commit` and `complete_steps` together (they agree through all-reduces)."""

    def __init__(self, url: str, storage_options: Dict, local_dir: Optional[str], world: Dist) -> None:
        fs, root = filesystem(url, storage_options)
        self.world = world
        self.remote: Optional[Tuple[AbstractFileSystem, str]] = None if is_local(fs) else (fs, root)
        if self.remote is None:
            self.local = Path(root)
            self.writer = world.is_main  # one writer of shared files on a shared filesystem
        else:
            self.local = Path(local_dir or default_local_dir(url)) / f"node-{world.rank - world.local_rank}"
            self.writer = world.local_rank == 0  # each node's first process stages and uploads the node's part
        self.url = url.rstrip("/")
        self.nodes = int(all_reduce_step([float(world.local_rank == 0)], world.device)[0])
        self._pushed: Dict[str, Tuple[int, int]] = {}
        self._lease: Optional[Lease] = None

    def where(self, path: Path) -> str:
        """The run-directory URL of a path in the local copy (what logs and markers name)."""
        return path.as_posix() if self.remote is None else join(self.url, path.relative_to(self.local).as_posix())

    def _store(self) -> Tuple[AbstractFileSystem, str]:
        """(filesystem, root) of the remote run directory (only called where there is one)."""
        if self.remote is None:
            raise RuntimeError(f"{self.url} is a local run directory: it has no remote store")
        return self.remote

    def _remote(self, relative: str) -> str:
        return join(self._store()[1], relative)

    def _agree(self, failure: str, what: str) -> None:
        """Every rank learns of a failure on any rank and raises it (none waits forever in the next collective);
        the rank that holds the cause prints it."""
        rank, cause = first_failure(failure)
        if cause:
            raise StorageError(f"{what} failed on rank {rank} ({cause}); nothing committed is lost: rerun the same "
                               "command to resume from the last complete checkpoint").held_by(rank)

    def _on_rank0(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn()` on rank 0 only, its result (or its failure, raised on every rank and printed by rank 0) broadcast
        to all. A medscale error keeps its own message (it names the fix); anything else is a storage failure."""
        box: List[Any] = [None, "", None]
        if self.world.is_main:
            try:
                box[0] = fn()
            except MedscaleError as exc:
                box[1], box[2] = str(exc), type(exc).__name__
            except Exception as exc:
                box[1] = describe(exc)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        if box[2]:
            raise getattr(errors, box[2], StorageError)(box[1]).held_by(0)
        if box[1]:
            raise StorageError(f"{what} failed ({box[1]}); nothing committed is lost: rerun the same command when "
                               "the storage answers again").held_by(0)
        return box[0]

    def take_lease(self, force: bool) -> None:
        """One trainer per run directory: rank 0 takes its lease (holder, host, pid, heartbeat), or every rank raises
        the error naming the live holder."""
        def take() -> None:
            fs, root = self.remote or filesystem(str(self.local))
            self._lease = Lease(fs, root, "medscale pretrain", force, LEASE_HEARTBEAT_S, LEASE_STALE_S,
                                elastic_job()).acquire()

        self._on_rank0(take, f"taking the lease of {self.url}")

    def release_lease(self) -> None:
        """Rank 0 gives the lease back (at the end, whatever happened; a failure is a warning: it goes stale)."""
        if self._lease is not None:
            try:
                self._lease.release()
            except Exception as exc:
                logger.warning("could not release the lease of %s: %s", self.url, describe(exc))
            self._lease = None

    def complete_steps(self, warn: bool = True) -> List[int]:
        """Steps of the complete checkpoints (marker and meta present), oldest first; partial ones warned of.
        Remote: rank 0 lists and tells the others (one listing, one answer for all)."""
        if self.remote is None:
            return [ck.step_of(p) for p in ck.complete_checkpoints(self.local)]
        return self._on_rank0(lambda: self._list_complete(warn), f"listing {join(self.url, ck.CHECKPOINTS)}")

    def _list_complete(self, warn: bool) -> List[int]:
        fs, _ = self._store()
        base = self._remote(ck.CHECKPOINTS)
        files = fs.find(base, maxdepth=2) if fs.exists(base) else []
        names: Dict[str, set] = {}
        for name in files:
            folder, _, leaf = name[len(base):].strip("/").partition("/")
            if folder.startswith("step-"):
                names.setdefault(folder, set()).add(leaf)
        done = []
        for folder in sorted(names):
            if {ck.COMPLETE, ck.META} <= names[folder]:
                done.append(int(folder.split("-", 1)[1]))
            elif warn:
                logger.warning("skipping %s: incomplete (no %s marker; a save was interrupted)",
                               join(self.url, ck.CHECKPOINTS, folder), ck.COMPLETE)
        return done

    def meta(self, step: int) -> Dict:
        """A checkpoint's meta.json, read where it lives (remote: by rank 0, told to all)."""
        if self.remote is None:
            return ck.read_json(ck.checkpoint_dir(self.local, step) / ck.META)
        return self._on_rank0(lambda: self._remote_meta(step), f"reading step {step}'s {ck.META}")

    def _remote_meta(self, step: int) -> Dict:
        fs, _ = self._store()
        with fs.open(self._remote(f"{ck.CHECKPOINTS}/step-{step:08d}/{ck.META}")) as fh:
            return json.load(fh)

    def fetch(self, step: int) -> Path:
        """The checkpoint of `step` in the local copy: downloaded to every node from a remote run directory, unless
        a whole copy of that very checkpoint (the same meta.json) is already there."""
        path = ck.checkpoint_dir(self.local, step)
        if self.remote is None:
            return path
        failure = ""
        if self.writer:
            try:
                fresh = (path / ck.COMPLETE).exists() and (path / ck.META).exists() and \
                    ck.read_json(path / ck.META) == self._remote_meta(step)
                if not fresh:
                    shutil.rmtree(path, ignore_errors=True)
                    self._download(f"{ck.CHECKPOINTS}/{path.name}", path)
                    ck.mark_complete(path, step)  # locally: a whole copy
            except Exception as exc:
                failure = describe(exc)
        self._agree(failure, f"downloading {self.where(path)}")
        return path

    def adopt(self, checkpoint: Path) -> Path:
        """Start this run from another run's complete `checkpoint` folder (`train.resume=PATH`): it is linked (or
        copied) into the local copy as this run's own, so that a conversion or a relaunch never writes into it."""
        meta = checkpoint / ck.META
        if not ((checkpoint / ck.COMPLETE).is_file() and meta.is_file()):
            raise errors.ConfigError(f"train.resume: {checkpoint} is not a complete checkpoint (no {ck.COMPLETE} "
                                     f"or {ck.META}); pass a RUN/{ck.CHECKPOINTS}/step-N folder of a local run")
        step = int(ck.read_meta(checkpoint)["step"])
        path = ck.checkpoint_dir(self.local, step)
        failure = ""
        if self.writer and not (path / ck.COMPLETE).exists():
            try:
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(checkpoint, path, ignore=shutil.ignore_patterns("universal"),
                                copy_function=_link_or_copy)
            except OSError as exc:
                failure = describe(exc)
        self._agree(failure, f"copying {checkpoint} into {self.where(path)}")
        return path

    def forget(self, path: Path) -> None:
        """A local copy that failed to load is downloaded again next time (remote run directories)."""
        if self.remote is not None and self.writer:
            (path / ck.COMPLETE).unlink(missing_ok=True)

    def begin(self, step: int) -> Path:
        """The folder a save of `step` writes into, emptied of anything an earlier save of that step left (here
        and remote; the marker goes first, so that a crash in between never leaves a marked mixture)."""
        path = ck.checkpoint_dir(self.local, step)
        if self.writer and path.exists():
            (path / ck.COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(path)
        failure = ""
        if self.remote is not None and self.world.is_main:
            fs, _ = self._store()
            target = self._remote(f"{ck.CHECKPOINTS}/{path.name}")
            try:
                if fs.exists(target):
                    if fs.exists(f"{target}/{ck.COMPLETE}"):
                        fs.rm(f"{target}/{ck.COMPLETE}")
                    fs.rm(target, recursive=True)
            except Exception as exc:
                failure = describe(exc)
        self._agree(failure, f"clearing {self.where(path)}")
        return path

    def commit(self, path: Path, step: int) -> None:
        """After every rank has written its part: rank 0 checks that this run still holds the lease, each node
        uploads its files, then rank 0 marks the checkpoint complete (remote last of all)."""
        self._on_rank0(lambda: self._lease.check() if self._lease else None, f"checking the lease of {self.url}")
        failure = ""
        if self.remote is not None and self.writer:
            try:
                self._upload(path, f"{ck.CHECKPOINTS}/{path.name}", skip=(ck.COMPLETE, "universal"))
            except Exception as exc:
                failure = describe(exc)
        self._agree(failure, f"uploading {self.where(path)}")
        if self.remote is not None:
            def mark() -> None:
                fs, _ = self._store()
                retrying(fs.pipe_file, self._remote(f"{ck.CHECKPOINTS}/{path.name}/{ck.COMPLETE}"),
                         f"{step}\n".encode(), retries=RETRIES, what="marking the checkpoint complete")
            self._on_rank0(mark, f"marking {self.where(path)} complete")
        if (self.remote is None and self.world.is_main) or (self.remote is not None and self.writer
                                                             and self.nodes == 1):
            ck.mark_complete(path, step)  # locally too where this copy is the whole checkpoint

    def prune(self, keep_last: int) -> None:
        """Keep the newest `keep_last` complete checkpoints (remote by rank 0; each node's copy by its writer).
        A failed removal is a warning: the run goes on, and the next prune tries again."""
        if self.remote is None:
            if self.world.is_main:
                ck.prune(self.local, keep_last)
            return
        if self.world.is_main:
            try:
                self._prune_remote(keep_last)
            except Exception as exc:
                logger.warning("could not remove old checkpoints of %s: %s", self.url, describe(exc))
        if self.writer:
            local = sorted((self.local / ck.CHECKPOINTS).glob("step-*"))
            for path in local[:-keep_last]:
                shutil.rmtree(path, ignore_errors=True)

    def _prune_remote(self, keep_last: int) -> None:
        fs, _ = self._store()
        done = self._list_complete(warn=False)
        keep, newest = set(done[-keep_last:]), (done[-1] if done else -1)
        for name in fs.ls(self._remote(ck.CHECKPOINTS), detail=False):
            folder = name.rstrip("/").rsplit("/", 1)[-1]
            if folder.startswith("step-") and int(folder.split("-", 1)[1]) not in keep \
                    and int(folder.split("-", 1)[1]) < newest:
                fs.rm(name, recursive=True)

    def sync(self, collective: bool = True) -> None:
        """Rank 0 uploads the run's files that changed since the last sync (config, log, TensorBoard, pictures,
        preemption marker, export); `collective`: every rank calls it and learns of a failure."""
        if self.remote is None:
            return
        if collective:
            self._on_rank0(self._push_run_files, f"uploading the run's files to {self.url}")
        elif self.world.is_main:
            self._push_run_files()

    def _push_run_files(self) -> None:
        for name in RUN_FILES:
            source = self.local / name
            for path in (sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else
                         [source] if source.exists() else []):
                stat = path.stat()
                key = path.relative_to(self.local).as_posix()
                if self._pushed.get(key) != (stat.st_size, stat.st_mtime_ns):
                    self._put(path, key)
                    self._pushed[key] = (stat.st_size, stat.st_mtime_ns)

    def pull(self) -> None:
        """Rank 0 of a remote run brings its log, TensorBoard events and pictures into the local copy (every rank
        calls it and learns of a failure)."""
        if self.remote is not None:
            self._on_rank0(self._pull_run_files, f"downloading the run's log from {self.url}")

    def _pull_run_files(self) -> None:
        fs, _ = self._store()
        for name in PULLED:
            if fs.exists(self._remote(name)):
                target = self.local / name
                if fs.isdir(self._remote(name)):
                    self._download(name, target)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    retrying(fs.get_file, self._remote(name), str(target), retries=RETRIES, what=f"downloading {name}")

    def _put(self, path: Path, relative: str) -> None:
        fs, _ = self._store()
        retrying(fs.put_file, str(path), self._remote(relative), retries=RETRIES,
                 what=f"uploading {join(self.url, relative)}")

    def _upload(self, folder: Path, relative: str, skip: Tuple[str, ...]) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            inner = path.relative_to(folder)
            if inner.parts[0] not in skip:
                self._put(path, f"{relative}/{inner.as_posix()}")

    def _download(self, relative: str, target: Path) -> None:
        fs, _ = self._store()
        base = self._remote(relative)
        for name in fs.find(base):
            local = target / name[len(base):].strip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            retrying(fs.get_file, name, str(local), retries=RETRIES, what=f"downloading {full_url(fs, name)}")

