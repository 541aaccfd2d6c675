"""The Ray services on a real two-node Ray cluster on this machine (a head and a second node, each started with
`ray start --block` and 1 CPU): sharding into object storage and the evaluation pool spread their tasks over both
nodes, and losing the second node mid-run loses nothing."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import _free_port, make_corpus
from tests.data.test_service import _inputs, check_exactly_once
from tests.eval.conftest import BREAST, PNEUMONIA, make_export
from tests.eval.test_remote import put_checkpoint
from tests.trainer.conftest import REPO

RAY = str(Path(sys.executable).parent / "ray")
ROOT = "medscale-test/ray-cluster"  # this module's prefix in the session's bucket


def _start(args, env):
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _alive_nodes(address, env):
    code = f"import ray; ray.init(address='{address}', logging_level='ERROR'); " \
           "print(sum(n['Alive'] for n in ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0


class TwoNodes:
    """A head node and a second node of one Ray cluster; `lose_second()` kills the second node's processes."""

    def __init__(self, node_env) -> None:
        self.temp = tempfile.mkdtemp(prefix="r2-", dir="/tmp")  # short: AF_UNIX paths <= 107 bytes
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self.env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **node_env}
        self.env.update(RAY_TMPDIR=self.temp, RAY_AUTH_MODE="token")  # Ray's default for `ray start --head`: every
        # client and node shows the token that the head wrote into ~/.ray/auth_token
        self.head = _start(["--head", f"--port={port}", f"--temp-dir={self.temp}", "--include-dashboard=false"],
                           self.env)
        time.sleep(3)
        self.second = _start([f"--address={self.address}"], self.env)
        deadline = time.time() + 120
        while _alive_nodes(self.address, self.env) < 2:
            assert time.time() < deadline, "the two-node Ray cluster did not come up"
            time.sleep(1)

    def lose_second(self) -> None:
        os.killpg(self.second.pid, signal.SIGKILL)  # the node's raylet and its workers, no goodbye

    def close(self) -> None:
        for proc in (self.second, self.head):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


@pytest.fixture(scope="module")
def two_nodes(s3_server):
    """One cluster for this module's tests (the last one loses its second node). The nodes' environment holds the
    object store's endpoint and keys, as a cloud node's role and setup give it (the driver's own environment does
    not travel to the tasks)."""
    cluster = TwoNodes({"AWS_ENDPOINT_URL": s3_server["client_kwargs"]["endpoint_url"], "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    yield cluster
    cluster.close()


def _medscale(cluster, *args):
    env = dict(cluster.env, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "medscale", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _summary(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_evaluation_pool_spreads_over_two_nodes_reading_checkpoints_from_s3(two_nodes, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    for step in (1, 2):
        put_checkpoint(fs, f"{ROOT}/runs/mae", step, make_export(tmp_path / f"e{step}", seed=step, step=step))
    evaluation = _medscale(two_nodes, "eval", "--checkpoints", f"s3://{ROOT}/runs/mae", "raw", "--tasks",
                           "retrieval", "knn", "--datasets", BREAST, PNEUMONIA, "--out", f"s3://{ROOT}/eval",
                           "--executor", "ray", "--ray-address", two_nodes.address, "eval.bootstrap=50",
                           "eval.task_memory_mb=256", "eval.progress=false", "--json")
    out, err = evaluation.communicate(timeout=600)
    assert evaluation.returncode == 0, err[-3000:]
    summary = _summary(out)
    assert summary["jobs"] == 3 * 2 * 2 and not summary["failed"] and len(summary["nodes"]) == 2, summary
    assert fs.glob(f"{ROOT}/eval/results.parquet/part-*.parquet")


@pytest.mark.slow
def test_sharding_spreads_over_two_nodes_and_survives_losing_one(two_nodes, s3_server, tmp_path, monkeypatch):
    import s3fs

    endpoint = s3_server["client_kwargs"]["endpoint_url"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the checks below read the outputs from S3 too
    corpus = make_corpus(tmp_path / "corpus", bad=False)
    shard = ["shard", *_inputs(corpus), "--executor", "ray", "--ray-address", two_nodes.address, "--shard-size",
             "10", "shard.progress=false", "shard.task_memory_mb=128", "--json"]
    first = _medscale(two_nodes, *shard, "--output", f"s3://{ROOT}/both")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert len(_summary(out)["nodes"]) == 2, _summary(out)  # units ran on both nodes
    expected = len([r for r in check_exactly_once(f"s3://{ROOT}/both") if r["status"] == "kept"])

    fs = s3fs.S3FileSystem(**s3_server)
    lost = _medscale(two_nodes, *shard, "--output", f"s3://{ROOT}/lost")
    deadline = time.time() + 300
    while len(fs.glob(f"{ROOT}/lost/manifest.parquet/part-*")) < 2:
        assert time.time() < deadline and lost.poll() is None, lost.communicate()[1][-3000:]
        time.sleep(0.2)
        fs.invalidate_cache()
    two_nodes.lose_second()
    out, err = lost.communicate(timeout=300)
    if lost.returncode != 0:  # Ray could not rerun a lost task: one line, and the rerun finishes the work
        errors = [line for line in err.splitlines() if line.startswith("medscale: error:")]
        assert lost.returncode == 2 and len(errors) == 1, err[-3000:]
        rerun = _medscale(two_nodes, *shard, "--output", f"s3://{ROOT}/lost")
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err[-3000:]
    kept = [r for r in check_exactly_once(f"s3://{ROOT}/lost") if r["status"] == "kept"]
    assert len(kept) == expected  # every sample exactly once
