"""fsspec helpers: one URL form for local folders and `s3://`, and atomic writes on both."""

from __future__ import annotations

import errno
import functools
import inspect
import os
import tempfile
from typing import Any, Callable, Mapping, Optional, Tuple

import fsspec
from fsspec import AbstractFileSystem
from fsspec.asyn import AsyncFileSystem
from fsspec.exceptions import FSTimeoutError

from medscale.core.errors import StorageError
from medscale.core.faults import DeadlineExceeded, error_code

DEADLINE_S = 120.0  # an object-storage operation that gets no answer within this fails (storage_options.deadline_s)
S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 15, "retries": {"max_attempts": 3, "mode": "standard"}}
S3_RETRIES = 1  # s3fs's own loop: one pass (botocore retries, timeouts included)
# downloads take as long as their data needs, and every read of theirs has the read timeout: no overall deadline
DOWNLOADS = {"cat", "cat_file", "cat_ranges", "get", "get_file"}
# uploads also wait for answers that no read timeout covers (a PUT's "100 Continue"): the deadline grows with the data
UPLOADS = {"pipe", "pipe_file", "put", "put_file"}
UPLOAD_FLOOR = 4 * 2**20  # bytes per second an upload may not be slower than (on top of the deadline)


def filesystem(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> Tuple[AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, `file://` or `s3://bucket/prefix` URL.

    An object store cannot hang a job: every request has connect and read timeouts and few attempts (defaults
    `S3_TIMEOUTS`, which `storage_options.config_kwargs` overrides key by key), so a download that stalls fails
    within about a minute whatever its size; every other operation ends within `storage_options.deadline_s`
    (default 120 s) as a whole, its retries included (an upload gets a second more per `UPLOAD_FLOOR` bytes), with a
    `DeadlineExceeded` naming it and the endpoint."""
    options = dict(storage_options or {})
    deadline = float(options.pop("deadline_s", DEADLINE_S))
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        options["config_kwargs"] = {**S3_TIMEOUTS, **config}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot open storage URL {url!r}: {exc}") from exc
    if protocol in ("s3", "s3a"):
        fs.retries = S3_RETRIES
    if isinstance(fs, AsyncFileSystem):
        _bound_calls(fs, deadline)
    return fs, path.rstrip("/") if path != "/" else path


def endpoint_of(fs: AbstractFileSystem) -> str:
    """The endpoint an object store's requests go to (for messages), or its protocol's default."""
    kwargs = getattr(fs, "client_kwargs", None) or {}
    return kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or f"the default {fs.protocol} endpoint"


def _bound_calls(fs: AsyncFileSystem, seconds: float) -> None:
    """Give the blocking calls of `fs` fsspec's sync timeout (`_deadline`); its instance attributes shadow the
    class's. fsspec caches instances, so this is done once per instance and deadline."""
    if getattr(fs, "_medscale_deadline", None) == seconds:
        return
    for name in dir(fs):
        if name.startswith("_") or name in DOWNLOADS:
            continue
        static = inspect.getattr_static(fs, name, None)  # no property runs
        if not inspect.isfunction(static):
            continue
        inner = getattr(static, "_medscale_unbounded", None) or getattr(fs, name)
        wrapped = getattr(getattr(inner, "__func__", inner), "__wrapped__", None)
        if inspect.iscoroutinefunction(wrapped):
            setattr(fs, name, _bounded(inner, name, seconds, endpoint_of(fs), fs.unstrip_protocol))
    fs._medscale_deadline = seconds


def _deadline(name: str, args: Tuple[Any, ...], seconds: float) -> float:
    """The seconds call `name(*args)` may take: `seconds`, and for an upload one more per UPLOAD_FLOOR bytes."""
    size = 0
    if name in ("pipe_file", "pipe") and len(args) > 1 and isinstance(args[1], (bytes, bytearray)):
        size = len(args[1])
    elif name == "pipe" and args and isinstance(args[0], dict):
        size = sum(len(v) for v in args[0].values())
    elif name in ("put_file", "put") and args and isinstance(args[0], (str, os.PathLike)):
        path = os.fspath(args[0])
        size = os.path.getsize(path) if os.path.isfile(path) else sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return seconds + size / UPLOAD_FLOOR


def _bounded(method: Callable[..., Any], name: str, seconds: float, endpoint: str,
             url: Callable[[str], str]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", _deadline(name, args, seconds))
        try:
            return method(*args, **kwargs)
        except FSTimeoutError:
            target = args[1] if name in UPLOADS and len(args) > 1 and isinstance(args[1], str) else \
                args[0] if args and isinstance(args[0], str) else None
            what = f"{name} {url(target)}" if target else name
            raise DeadlineExceeded(f"{what}: no answer from {endpoint} within {kwargs['timeout']:.0f} s (the store "
                                   "is down or unreachable; storage_options.deadline_s sets the limit)") from None

    call._medscale_unbounded = method  # type: ignore[attr-defined]
    return call


def is_local(fs: AbstractFileSystem) -> bool:
    """True when `fs` is the local disk (rename is atomic there)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def join(base: str, *parts: str) -> str:
    """Join path parts with '/' (object stores and local paths alike)."""
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def absolute_url(url: Optional[str]) -> Optional[str]:
    """`url` with a local path made absolute (a URL such as `s3://...` as it is): what a record of where data came
    from must say, whatever directory it is read from."""
    if not url or "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


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
