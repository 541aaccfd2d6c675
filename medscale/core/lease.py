"""One writer per output directory (a corpus, a run directory, an evaluation folder): a lease file that names its
holder and carries a heartbeat, taken before the first write and checked again before each commit; locally and on
object stores (an exclusive create: a hard link here, a conditional PUT on S3).

    with Lease(fs, root, "medscale shard", force=args.force) as lease:
        ...
        lease.check()   # before each commit: raises when another writer broke the lease (--force)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Mapping, Optional

from fsspec import AbstractFileSystem

from medscale.core.errors import StorageError
from medscale.core.faults import describe, retrying
from medscale.core.storage import full_url, join, put_bytes_atomic

logger = logging.getLogger(__name__)
LEASE_NAME = "_lock.json"
HEARTBEAT_S = 30.0  # the holder rewrites its heartbeat this often
STALE_S = 600.0  # a lease whose heartbeat is older than this is stale (its holder died on another machine)


class Lease:
    """One writer per output: `OUTPUT/_lock.json` names the holder (command, host, pid, start time) and carries a
    heartbeat every `heartbeat_s`. Taken by `medscale shard`, `medscale dedup` (decisions), `--write-kept` (its
    output) and `medscale pretrain` (its run directory).

    Stale rule: the lease is free when its holder ran on this host and its pid is gone, or when its heartbeat is
    older than `stale_s` (a holder on another machine that died), or when it was held for the same `job` (an
    elastic launcher's run id: its launcher stops every worker before it restarts them, so the holder is gone or
    going). `force=True` (`--force`) breaks a live lease.
    """

    def __init__(self, fs: AbstractFileSystem, root: str, command: str, force: bool = False,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S, job: Optional[str] = None) -> None:
        self.fs, self.path, self.command, self.force = fs, join(root, LEASE_NAME), command, force
        self.job = job
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lost = False  # set when another writer broke this lease (with --force)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def _record(self) -> bytes:
        return json.dumps({"holder": self.command, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": self._started, "heartbeat": time.time(), "token": self.token,
                           "job": self.job}).encode()

    def read(self) -> Optional[Dict[str, Any]]:
        """The current lease record; None when there is none; {} when its content is not a record (stale). A
        storage fault is retried and then raised: a failed read never makes a live lease look stale."""
        try:
            raw = retrying(self.fs.cat_file, self.path, retries=3, what=f"reading {self.path}")
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def is_stale(self, record: Mapping[str, Any]) -> bool:
        """The stale rule (see the class docstring)."""
        if not record or self.job is not None and record.get("job") == self.job:
            return True
        if record.get("host") == socket.gethostname():
            try:
                os.kill(int(record.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, OverflowError):
                pass
        return time.time() - float(record.get("heartbeat", 0)) > self.stale_s

    def acquire(self) -> "Lease":
        """Take the lease, or raise StorageError naming the live holder and the way out."""
        for _ in range(2):
            try:
                put_bytes_atomic(self.fs, self.path, self._record(), overwrite=False)
                break
            except StorageError:
                record = self.read()
                if record is None:
                    continue  # released meanwhile: try again
                if not (self.force or self.is_stale(record)):
                    raise StorageError(
                        f"{full_url(self.fs, self.path)}: this output is being written by `{record.get('holder')}` "
                        f"on {record.get('host')} (pid {record.get('pid')}, since {record.get('started')}); wait "
                        "for it to finish, or pass --force if that run is dead") from None
                logger.warning("breaking the %s lease of %s on %s (pid %s)", "live" if not self.is_stale(record)
                               else "stale", record.get("holder"), record.get("host"), record.get("pid"))
                self.fs.rm_file(self.path)
        else:
            raise StorageError(f"{full_url(self.fs, self.path)}: another writer took the lease at the same moment; "
                               "rerun when it has finished")
        self._thread = threading.Thread(target=self._beat, name="medscale-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                record = self.read()
                if not record or record.get("token") != self.token:
                    self.lost = True
                    return
                put_bytes_atomic(self.fs, self.path, self._record())
            except Exception as exc:  # a heartbeat missed is not fatal; the next one may pass
                logger.warning("could not refresh the lease: %s", describe(exc))

    def check(self) -> None:
        """Raise StorageError when another writer broke this lease (read before each commit)."""
        record = self.read()
        self.lost = self.lost or not record or record.get("token") != self.token
        if self.lost:
            raise StorageError(f"{full_url(self.fs, self.path)}: another run broke this run's lease (--force); "
                               "stopping before the next commit. Rerun when that run has finished")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        record = self.read()
        if record and record.get("token") == self.token:
            self.fs.rm_file(self.path)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()
