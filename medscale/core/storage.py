"""fsspec helpers: one URL form for local folders and `s3://`, and atomic writes on both."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any, Mapping, Optional, Tuple

import fsspec
from fsspec import AbstractFileSystem

from medscale.core.errors import StorageError
from medscale.core.faults import error_code


def filesystem(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> Tuple[AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, `file://` or `s3://bucket/prefix` URL."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open storage URL {url!r}: {exc}") from exc
    return fs, path.rstrip("/") if path != "/" else path


def is_local(fs: AbstractFileSystem) -> bool:
    """True when `fs` is the local disk (rename is atomic there)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def join(base: str, *parts: str) -> str:
    """Join path parts with '/' (object stores and local paths alike)."""
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def full_url(fs: AbstractFileSystem, path: str) -> str:
    """A URL that reopens `path` on `fs` (keeps the protocol for remote stores)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _umask() -> int:
    """The process umask, read without changing it where the OS tells (Linux), else by setting and restoring."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a plain `open(path, "w")` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def mkstemp_shared(directory: Optional[str] = None, prefix: str = ".tmp-", suffix: str = "") -> Tuple[int, str]:
    """`tempfile.mkstemp`, but with the permissions the umask gives new files (mkstemp makes them owner-only,
    and renaming a temp file into place keeps its mode): other users of a shared cluster can read the corpus."""
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.fchmod(fd, file_mode())
    return fd, path


def _exists_error(path: str) -> StorageError:
    return StorageError(f"{path} already exists and is never overwritten: another writer is using this output "
                        "(one writer per output); rerun when it has finished")


def _link_into_place(src: str, dst: str) -> None:
    """Rename `src` to `dst` unless `dst` exists (a hard link fails on an existing name; atomic)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise _exists_error(dst) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.exists(dst):  # a filesystem without hard links: check, then rename
            raise _exists_error(dst) from None
        os.replace(src, dst)
        return
    os.unlink(src)


def put_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes, overwrite: bool = True) -> None:
    """Write `data` so that `path` appears complete or not at all (temp+rename locally, one PUT on S3). With
    `overwrite=False` an existing `path` is an error (locally a hard link; on S3 a conditional PUT, or a check
    where the store does not support one)."""
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = mkstemp_shared(directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if overwrite:
                os.replace(tmp, path)
            else:
                _link_into_place(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    elif overwrite:
        fs.pipe_file(path, data)
    else:
        _put_if_absent(fs, path, data)


def _put_if_absent(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    try:
        fs.pipe_file(path, data, mode="create")
        return
    except (TypeError, NotImplementedError):  # this filesystem has no exclusive-create mode
        pass
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as exc:
        code = error_code(exc.__cause__) or error_code(exc)
        if code in ("PreconditionFailed", "412") or "PreconditionFailed" in str(exc):
            raise _exists_error(path) from None
        if code not in ("NotImplemented", "501"):
            raise
    if fs.exists(path):
        raise _exists_error(path)
    fs.pipe_file(path, data)


def put_file_atomic(fs: AbstractFileSystem, local_path: str, path: str) -> None:
    """Move a finished local file to `path` on `fs`, atomically as above; the local file is consumed."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local_path, path)
    else:
        try:
            fs.put_file(local_path, path)
        finally:  # a failed upload leaves no local temp behind (a unit is retried)
            os.unlink(local_path)


def move(fs: AbstractFileSystem, src: str, dst: str, overwrite: bool = True) -> None:
    """Rename within one store (atomic rename locally, server-side copy then delete on S3). With
    `overwrite=False` an existing `dst` is an error (the commit never replaces a shard)."""
    if is_local(fs):
        if overwrite:
            os.replace(src, dst)
        else:
            _link_into_place(src, dst)
    else:
        if not overwrite and fs.exists(dst):
            raise _exists_error(dst)
        fs.mv(src, dst)


def bucket_of(fs: AbstractFileSystem, path: str) -> Optional[str]:
    """The bucket of a path on an object store (None on the local disk)."""
    return None if is_local(fs) else path.split("/", 1)[0]


def check_writable(fs: AbstractFileSystem, path: str, url: str) -> None:
    """Fail early, naming the URL, when the output location cannot be written. Never creates a bucket: a
    misspelled one would otherwise silently receive the corpus."""
    bucket = bucket_of(fs, path)
    try:
        if bucket is not None:
            if not fs.exists(bucket):
                raise StorageError(f"bucket {bucket!r} of output {url!r} does not exist; medscale never creates "
                                   "buckets: check the name, or create it first")
        else:
            fs.makedirs(path, exist_ok=True)
        probe = join(path, f"_write_probe-{os.getpid()}")
        fs.pipe_file(probe, b"ok")
        fs.rm_file(probe)
    except StorageError:
        raise
    except Exception as exc:  # permission, network: all surface the same way
        raise StorageError(f"output {url!r} is not writable ({type(exc).__name__}: {exc}); "
                           "check the path, the bucket name and the credentials.") from exc


def register_webdataset_opener(scheme: str = "s3", storage_options: Optional[Mapping[str, Any]] = None) -> None:
    """Make `webdataset.WebDataset("s3://...")` open shards through fsspec with `storage_options` (an explicit
    call, so importing medscale changes nothing in webdataset)."""
    import importlib

    import fsspec

    gopen = importlib.import_module("webdataset.gopen")  # the module (the package re-exports a function by that name)
    options = dict(storage_options or {})

    def opener(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
        return fsspec.open(url, mode, **options).open()

    gopen.gopen_schemes[scheme] = opener
