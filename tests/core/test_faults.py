"""Which errors are failed attempts (retried, or the run stops) and which are bad files (quarantined)."""

import errno

import pytest

from medscale.core.errors import InputError
from medscale.core.faults import FATAL, TRANSIENT, describe, fault_kind, retrying


def _raised_from(cause: BaseException) -> InputError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise InputError("x.dcm: not a readable DICOM file") from exc
    except InputError as wrapped:
        return wrapped


def test_faults_are_told_apart_from_bad_files():
    from botocore.exceptions import EndpointConnectionError
    from PIL import UnidentifiedImageError

    assert fault_kind(OSError(errno.ENOSPC, "No space left on device")) == FATAL
    assert fault_kind(PermissionError(errno.EACCES, "Permission denied")) == FATAL
    assert fault_kind(ConnectionResetError()) == TRANSIENT
    assert fault_kind(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) == TRANSIENT
    assert fault_kind(OSError(errno.EBUSY, "SlowDown")) == TRANSIENT  # s3fs's translation of throttling
    assert fault_kind(_raised_from(OSError(errno.ENOSPC, "full"))) == FATAL  # a reader wrapped it: still a fault
    # a decoder's complaints about the file itself are not faults
    assert fault_kind(OSError("image file is truncated")) is None
    assert fault_kind(UnidentifiedImageError("cannot identify image file")) is None
    assert fault_kind(_raised_from(ValueError("bad tag"))) is None


def test_describe_is_one_line_without_colour_codes():
    assert describe(ValueError("\x1b[36mray::process_unit()\x1b[39m (pid=1)\nTraceback...")) == \
        "ValueError: ray::process_unit() (pid=1)"


def test_transient_faults_are_retried_within_the_budget():
    calls = []

    def flaky(fail_times: int) -> str:
        calls.append(1)
        if len(calls) <= fail_times:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    assert retrying(flaky, 1, retries=2, what="test") == "ok" and len(calls) == 2
    calls.clear()
    with pytest.raises(ConnectionResetError):
        retrying(flaky, 5, retries=1, what="test")
    assert len(calls) == 2  # the first try and one retry
    calls.clear()
    with pytest.raises(ValueError):  # not a fault: never retried
        retrying(lambda: calls.append(1) or int("x"), retries=3, what="test")
    assert len(calls) == 1


def test_quarantine_reasons_carry_no_colour_codes():
    from medscale.data.ingest import quarantine_row

    row = quarantine_row("ct", "dicom", "x.dcm", "\x1b[36mbad\x1b[39m pixels", None)
    assert row["reason"] == "bad pixels"
