"""fsspec helpers: one URL form for local folders and `s3://`, and atomic writes on both."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Optional, Tuple

import fsspec
from fsspec import AbstractFileSystem

from medscale.core.errors import StorageError


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


def put_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` so that `path` appears complete or not at all (temp+rename locally, one PUT on S3)."""
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def put_file_atomic(fs: AbstractFileSystem, local_path: str, path: str) -> None:
    """Move a finished local file to `path` on `fs`, atomically as above; the local file is consumed."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local_path, path)
    else:
        fs.put_file(local_path, path)
        os.unlink(local_path)


def move(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Rename within one store (atomic rename locally, server-side copy then delete on S3)."""
    if is_local(fs):
        os.replace(src, dst)
    else:
        fs.mv(src, dst)


def check_writable(fs: AbstractFileSystem, path: str, url: str) -> None:
    """Fail early, naming the URL, when the output location cannot be created or written."""
    try:
        fs.makedirs(path, exist_ok=True)
        probe = join(path, "_write_probe")
        fs.pipe_file(probe, b"ok")
        fs.rm_file(probe)
    except Exception as exc:  # permission, missing bucket, network: all surface the same way
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
