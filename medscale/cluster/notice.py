"""Spot interruption notices: a thread polls the cloud's metadata server and, on a notice, starts the preemption
path in this process (a signal to `medscale launch`, which passes it to every rank: they agree, save, write
`preempted.json` and exit 75) instead of waiting for the kill.

    watcher = NoticeWatcher("aws", interval_s=5.0, on_notice=lambda what: os.kill(os.getpid(), signal.SIGUSR1))
    watcher.start()

AWS: `GET /latest/meta-data/spot/instance-action` (IMDSv2 token first, IMDSv1 if none) is 404 until a notice, then
`{"action": "terminate", "time": ...}` two minutes ahead. GCP: `/computeMetadata/v1/instance/preempted` is `TRUE`
from the start of the 30 s notice.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from typing import Callable, Dict, Optional

logger = logging.getLogger(__name__)
DEFAULT_URLS: Dict[str, str] = {"aws": "http://169.254.169.254", "gcp": "http://metadata.google.internal"}
REQUEST_TIMEOUT_S = 2.0  # a metadata server answers in milliseconds; a poll must never outlast its interval


def _request(url: str, headers: Dict[str, str], method: str = "GET") -> Optional[bytes]:
    """The body of a 200 answer; None on 404 (no notice)."""
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
            return answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def aws_notice(base: str) -> Optional[str]:
    """The pending spot interruption ("terminate at 2026-...") of this EC2 instance, or None."""
    headers = {}
    try:
        token = _request(base + "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}, "PUT")
        if token:
            headers["X-aws-ec2-metadata-token"] = token.decode()
    except (urllib.error.URLError, OSError):
        pass  # IMDSv1 only: ask without a token
    body = _request(base + "/latest/meta-data/spot/instance-action", headers)
    if body is None:
        return None
    notice = json.loads(body)
    return f"{notice.get('action', 'terminate')} at {notice.get('time', '?')}"


def gcp_notice(base: str) -> Optional[str]:
    """"preempted" once this GCE spot or preemptible VM is being preempted, else None."""
    body = _request(base + "/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"})
    return "preempted" if body is not None and body.strip().upper() == b"TRUE" else None


SOURCES: Dict[str, Callable[[str], Optional[str]]] = {"aws": aws_notice, "gcp": gcp_notice}
CHOICES = ("auto", *SOURCES)  # auto: the first cloud whose metadata server answers


class NoticeWatcher(threading.Thread):
    """Polls `SOURCES[source]` (or, for `auto`, each cloud's until one answers) every `interval_s`; calls
    `on_notice(description)` once, on the first notice. An unreachable metadata server is said once and polled on
    (it may come back)."""

    def __init__(self, source: str, interval_s: float, on_notice: Callable[[str], None],
                 metadata_url: Optional[str] = None) -> None:
        super().__init__(name=f"spot-notice-{source}", daemon=True)
        if source not in CHOICES:
            raise ValueError(f"unknown notice source {source!r}: one of {', '.join(CHOICES)}")
        self.candidates = list(SOURCES) if source == "auto" else [source]
        self.metadata_url, self.interval_s, self.on_notice = metadata_url, interval_s, on_notice
        self.noticed: Optional[str] = None
        self._stop_event = threading.Event()

    def _base(self, source: str) -> str:
        return (self.metadata_url or DEFAULT_URLS[source]).rstrip("/")

    def poll_once(self) -> Optional[str]:
        """One look; with several candidate clouds, the first that answers is kept from then on."""
        failure: Optional[Exception] = None
        for source in list(self.candidates):
            try:
                notice = SOURCES[source](self._base(source))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failure = exc
                continue
            self.candidates = [source]
            return notice
        raise failure if failure is not None else OSError("no metadata server")

    def run(self) -> None:
        """Poll until a notice arrives or `stop()` is called; on a notice, call the callback once."""
        warned = False
        while not self._stop_event.is_set():
            try:
                self.noticed = self.poll_once()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if not warned:
                    where = ", ".join(self._base(s) for s in self.candidates)
                    logger.warning("spot notices: %s does not answer (%s); polling on every %.0f s", where, exc,
                                   self.interval_s)
                    warned = True
            if self.noticed:
                logger.warning("spot interruption notice (%s): saving at the next step boundary", self.noticed)
                self.on_notice(self.noticed)
                return
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        """End the polling (at the latest one interval later)."""
        self._stop_event.set()
