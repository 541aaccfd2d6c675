"""Preflight: each problem is one line naming the fix, before any launcher starts."""

import os
import socket
import subprocess
import sys

import pytest

from medscale.config import load
from medscale.core.errors import ConfigError
from medscale.launcher.preflight import check_endpoint, check_gpus
from tests.conftest import one_line_error
from tests.trainer.conftest import ENV, MAE_TINY, REPO


def launch(*overrides, timeout=120):
    """`medscale launch` (not a dry run) with the tiny MAE config; the finished process."""
    return subprocess.run([sys.executable, "-m", "medscale", "launch", "-c", str(MAE_TINY), *overrides],
                          capture_output=True, text=True, env=dict(os.environ, **ENV), cwd=REPO, timeout=timeout)


def test_a_taken_rendezvous_port_on_node_0_is_refused():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = load(None, ["launch.nodes=2", f"launch.rdzv_endpoint=127.0.0.1:{port}", "launch.node_rank=0"])
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already taken"):
            check_endpoint(cfg.launch)


def test_an_unreachable_endpoint_is_refused_on_the_other_nodes():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        cfg = load(None, ["launch.nodes=2", f"launch.rdzv_endpoint=127.0.0.1:{port}", "launch.node_rank=1"])
        with pytest.raises(ConfigError, match="unreachable from node 1 after 1 s.*start node 0 first"):
            check_endpoint(cfg.launch, wait_s=1)


def test_node_0_must_be_the_endpoints_machine():
    cfg = load(None, ["launch.nodes=2", "launch.rdzv_endpoint=192.0.2.1:29400", "launch.node_rank=0"])
    with pytest.raises(ConfigError, match="is not this machine, but this is node 0"):
        check_endpoint(cfg.launch)


def test_more_processes_than_gpus_is_refused():
    cfg = load(None, ["launch.procs_per_node=4"])
    with pytest.raises(ConfigError, match="sees 2 GPU"):
        check_gpus(cfg.launch, gpus=2)
    check_gpus(cfg.launch, gpus=0)  # CPU ranks: any number


def test_each_preflight_failure_is_one_line_before_anything_starts(tmp_path, train_corpus):
    (tmp_path / "file").write_text("")
    cases = {
        "train.run_dir": ([f"train.data={train_corpus}", f"train.run_dir={tmp_path / 'file' / 'run'}"],
                          "is not writable"),
        "corpus": ([f"train.data={tmp_path / 'missing'}", f"train.run_dir={tmp_path / 'run'}"], "missing"),
        "trainer config": ([f"train.data={train_corpus}", f"train.run_dir={tmp_path / 'run'}",
                            "loader.augment=contrastive"], "leave loader.augment unset"),
        "no run dir": ([f"train.data={train_corpus}"], "train.run_dir is not set"),
    }
    for name, (overrides, expected) in cases.items():
        line = one_line_error(launch(*overrides))
        assert expected in line, (name, line)
    assert not (tmp_path / "run").exists()  # nothing started


def test_an_object_store_run_directory_that_refuses_writes_is_one_line(tmp_path, train_corpus, s3_server):
    endpoint = s3_server["client_kwargs"]["endpoint_url"]
    line = one_line_error(launch(f"train.data={train_corpus}", "train.run_dir=s3://no-such-bucket/run",
                                 "train.storage_options={key: testing, secret: testing, client_kwargs: "
                                 f"{{endpoint_url: '{endpoint}'}}}}"))
    assert "s3://no-such-bucket/run is not writable" in line and "testing" not in line
