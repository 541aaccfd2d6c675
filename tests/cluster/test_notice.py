"""Spot interruption notices from a metadata server on 127.0.0.1 speaking AWS's and GCP's protocols."""

import logging
import threading
import time

from medscale.cluster.notice import NoticeWatcher, aws_notice, gcp_notice
from tests.cluster.conftest import MetadataServer
from tests.conftest import _free_port


def test_aws_imdsv2_is_none_until_the_notice_then_its_action_and_time(metadata):
    assert aws_notice(metadata.url) is None
    metadata.notice()
    assert aws_notice(metadata.url) == "terminate at 2026-12-07T05:00:00Z"
    assert [r[:2] for r in metadata.requests[:2]] == [("PUT", "/latest/api/token"),
                                                       ("GET", "/latest/meta-data/spot/instance-action")]


def test_aws_without_imdsv2_asks_without_a_token():
    server = MetadataServer(imds_v2=False)
    try:
        server.notice()
        assert aws_notice(server.url) == "terminate at 2026-12-07T05:00:00Z"
    finally:
        server.close()


def test_gcp_preempted_flag(metadata):
    assert gcp_notice(metadata.url) is None
    metadata.notice()
    assert gcp_notice(metadata.url) == "preempted"


def test_the_watcher_calls_back_once_on_the_first_notice(metadata):
    calls, called = [], threading.Event()
    watcher = NoticeWatcher("aws", 0.05, lambda what: (calls.append(what), called.set()), metadata.url)
    watcher.start()
    time.sleep(0.3)
    assert not calls and watcher.is_alive()
    metadata.notice()
    assert called.wait(5)
    watcher.join(5)
    assert calls == ["terminate at 2026-12-07T05:00:00Z"] and not watcher.is_alive()


def test_an_unreachable_metadata_server_is_said_once_and_polled_on(caplog):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens: off a cloud, or the server is down for a while
    watcher = NoticeWatcher("gcp", 0.05, lambda what: None, url)
    with caplog.at_level(logging.WARNING, logger="medscale.cluster.notice"):
        watcher.start()
        time.sleep(0.5)
        assert watcher.is_alive()
        watcher.stop()
        watcher.join(5)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and url in said[0] and "polling on" in said[0]


def test_auto_keeps_to_the_first_cloud_that_answers():
    server = MetadataServer()  # speaks both: AWS answers first
    calls = []
    try:
        watcher = NoticeWatcher("auto", 0.05, calls.append, server.url)
        assert watcher.poll_once() is None and watcher.candidates == ["aws"]
        server.notice()
        assert watcher.poll_once() == "terminate at 2026-12-07T05:00:00Z"
    finally:
        server.close()
