"""Failed attempts versus bad files: which errors are storage or infrastructure faults (retried, or stop the run,
never quarantine an input), and one-line descriptions of errors for people (no tracebacks, no colour codes).

The rule: an exception is a *fault* when it, or any exception in its cause/context chain, is
- *transient* (retried within a budget): connection and timeout errors (builtin, botocore, aiohttp), throttling and
  5xx answers of object stores (s3fs raises them as OSError EBUSY), EAGAIN/ETIMEDOUT-style errnos;
- *fatal* (stop at once, the rerun finishes): a full disk or quota, a permission or read-only error, a missing
  file or bucket, a worker process or node that died.
Anything else raised while decoding an input is that input's problem (a bad file: quarantined with its reason).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT, FATAL = "transient", "fatal"
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EIO,
                 errno.EFBIG, errno.EMFILE, errno.ENFILE}
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError",
                    "ClientPayloadError", "ProxyConnectionError", "ResponseStreamingError"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "500", "502", "503", "504"}
_FATAL_NAMES = {"BrokenProcessPool", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "NoSuchBucket",
                "NoCredentialsError", "AccessDenied", "RaySystemError", "LocalRayletDiedError"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeadlineExceeded(TimeoutError):
    """An object-storage operation got no answer within its deadline (retries included): transient, but never
    retried again (the deadline was its whole budget); the rerun finishes the work."""


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then its causes and contexts (and the cause a Ray task error wraps), each once."""
    seen = set()
    todo: List[Optional[BaseException]] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]


def error_code(e: Optional[BaseException]) -> str:
    """The error code an object store answered with (botocore's `response["Error"]["Code"]`), or ""."""
    response = getattr(e, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code", "")) if isinstance(error, dict) else ""


def strip_ansi(text: str) -> str:
    """`text` without terminal colour codes (Ray colours its error messages)."""
    return _ANSI.sub("", text)


def _kind_of_one(e: BaseException) -> Optional[str]:
    names = {cls.__name__ for cls in type(e).__mro__}
    code = error_code(e)
    if names & _FATAL_NAMES or code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId"):
        return FATAL
    if isinstance(e, (ConnectionError, TimeoutError)) or names & _TRANSIENT_NAMES or code in _TRANSIENT_CODES:
        return TRANSIENT
    if isinstance(e, OSError) and e.errno is not None:
        if e.errno in _FATAL_ERRNOS:
            return FATAL
        if e.errno in _TRANSIENT_ERRNOS:
            return TRANSIENT
    return None


def fault_kind(exc: BaseException) -> Optional[str]:
    """TRANSIENT, FATAL, or None when `exc` is not a storage or infrastructure fault (see the module's rule)."""
    kinds = [k for k in map(_kind_of_one, chain(exc)) if k]
    return FATAL if FATAL in kinds else (kinds[0] if kinds else None)


def describe(exc: BaseException) -> str:
    """`Type: message` on one line, of the innermost meaningful error (a Ray task error's cause), colour removed."""
    inner = getattr(exc, "cause", None) or exc
    message = _ANSI.sub("", str(inner)).strip().splitlines()
    text = message[0] if message else ""
    return f"{type(inner).__name__}: {text[:400]}" if text else type(inner).__name__


FULL_DISK_BYTES = 4 * 2**20  # a filesystem with less free space than this is full for a failed write's purposes


def describe_write(exc: BaseException, path: str | Path) -> str:
    """`describe(exc)` of a failed write of `path`, saying so when the filesystem holding it is full: torch's zip
    writer reports a full disk as "unexpected pos" or "file write failed", without the errno."""
    text = describe(exc)
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return text
    if free < FULL_DISK_BYTES and "No space left" not in text:
        return f"no space left on the device holding {folder} ({free / 2**20:.1f} MiB free) writing {path}: {text}"
    return text


def retry_delays(retries: int, first: float = 1.0, cap: float = 30.0) -> Iterator[float]:
    """The waits before each retry: `first`, doubling, at most `cap` (retries=3: 1, 2, 4 s)."""
    for attempt in range(retries):
        yield min(cap, first * 2 ** attempt)


def log_dir() -> Path:
    """Where full tracebacks go: $MEDSCALE_LOG_DIR, else ~/.cache/medscale/logs, else the temp dir."""
    for candidate in (os.environ.get("MEDSCALE_LOG_DIR"), Path.home() / ".cache" / "medscale" / "logs",
                      Path(tempfile.gettempdir()) / "medscale-logs"):
        if candidate:
            try:
                Path(candidate).mkdir(parents=True, exist_ok=True)
                return Path(candidate)
            except OSError:
                continue
    return Path(tempfile.gettempdir())


def log_path(what: str) -> Path:
    """A new log file's path in `log_dir()`, named after `what`, the time and this process."""
    name = what if what.startswith("medscale") else f"medscale-{what}"
    return log_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def write_log(text: str, what: str) -> Path:
    """Write `text` (a full traceback) to a new log file named after `what`; returns its path."""
    path = log_path(what)
    try:
        path.write_text(_ANSI.sub("", text))
    except OSError as exc:  # the log's own disk may be the full one: say so, never raise from here
        return Path(f"(not saved: {describe(exc)})")
    return path


def traceback_text(exc: BaseException) -> str:
    """The full traceback of `exc` (and of the worker, for a Ray task error) as text."""
    return "".join(traceback.format_exception(exc))


def stopped(what: str, kind: Optional[str], message: str, details: str, attempts: int = 1) -> str:
    """The one line that says why a run stopped, that nothing committed is lost, how to resume, and where the
    full traceback is (written now)."""
    log = write_log(details, re.sub(r"[^A-Za-z0-9]+", "-", what)[:40].strip("-"))
    if kind == TRANSIENT:
        why = f"{what} failed after {attempts} attempts: {message}" if attempts > 1 else f"{what} failed: {message}"
        fix = "rerun the same command to resume when the storage answers again"
    elif kind == FATAL:
        why = f"{what} stopped: {message}"
        fix = "fix the cause (disk space, permissions, bucket, credentials, memory) and rerun the same command"
    else:
        why = f"{what} failed with an unexpected error: {message}"
        fix = "rerun the same command to resume; report it if it repeats"
    return f"{why}. Nothing committed is lost: {fix} (full traceback: {log})"


_TIMEOUT_NAMES = {"ReadTimeoutError", "ConnectTimeoutError", "ServerTimeoutError", "FSTimeoutError"}


def timed_out(exc: BaseException) -> bool:
    """True when `exc` (or its chain) is a timeout: the store did not answer."""
    return any(isinstance(e, TimeoutError) or {c.__name__ for c in type(e).__mro__} & _TIMEOUT_NAMES
               for e in chain(exc))


def retrying(fn: Callable[..., T], *args: Any, retries: int, what: str) -> T:
    """`fn(*args)`, retried `retries` times after a transient fault that answered fast (a reset, throttling, a
    5xx: waits of `retry_delays`), one log line per retry. A timeout is not retried: the request layers below
    already tried within their timeouts, and a store that does not answer must not hold the job longer. Any other
    error, or the last transient one, is raised."""
    delays = retry_delays(retries)
    for attempt in range(1, retries + 2):
        try:
            return fn(*args)
        except Exception as exc:
            delay = next(delays, None) if fault_kind(exc) == TRANSIENT and not timed_out(exc) else None
            if delay is None:
                raise
            logger.warning("%s: %s; retry %d of %d in %.0f s", what, describe(exc), attempt, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
