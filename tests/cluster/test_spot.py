"""A spot job for real on this machine: the generated SkyPilot task's `setup` and `run` executed as SkyPilot would
(its variables set, every attempt in fresh working directories and local caches), the run directory on a moto S3
server, each preemption an interruption notice from a fake metadata server on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import _free_port
from tests.launcher.test_launch import TINY
from tests.trainer.conftest import ENV, MAE_TINY, REPO, logged_losses, run_cmd, torchrun_cmd

TASK_ID = "sky-managed-2026-12-07-05-00-00-000000_medscale_1-0"  # SkyPilot's: the same in every recovery


def _extensions_dir() -> str:
    """Where torch builds DeepSpeed's ops under this HOME (torch's own naming): every attempt reuses that build."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    accelerator = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    return str(Path(get_default_build_root()) / f"py{sys.version_info.major}{sys.version_info.minor}_{accelerator}")


def run_attempt(task, nodes, where, s3_env):
    """Start the task's run on `nodes` fresh nodes (after each one's setup), as SkyPilot does after (re)provisioning;
    the node processes and their logs."""
    procs = []
    for rank in range(nodes):
        node = where / f"node{rank}"
        (node / "home").mkdir(parents=True)
        (node / "work").mkdir()
        env = dict(os.environ, **ENV, **s3_env, **task.get("envs", {}), HOME=str(node / "home"),
                   # medscale found on the PATH as on a node; the venv last, so that torch builds DeepSpeed's ops
                   # with the same ninja as the rest of the suite (another ninja's log rebuilds them: minutes)
                   PATH=f"{os.environ['PATH']}:{Path(sys.executable).parent}", PYTHONPATH=str(REPO),
                   TORCH_EXTENSIONS_DIR=_extensions_dir(),  # the image's build cache: the suite's own DeepSpeed ops
                   SKYPILOT_NODE_IPS="\n".join(["127.0.0.1"] * nodes), SKYPILOT_NODE_RANK=str(rank),
                   SKYPILOT_NUM_NODES=str(nodes), SKYPILOT_NUM_GPUS_PER_NODE="0", SKYPILOT_TASK_ID=TASK_ID)
        setup = subprocess.run(["bash", "-c", task["setup"]], cwd=node / "work", env=env, capture_output=True,
                               text=True)
        assert setup.returncode == 0, setup.stderr
        log = open(node / "run.log", "w")
        procs.append((subprocess.Popen(["bash", "-c", task["run"]], cwd=node / "work", env=env, stdout=log,
                                       stderr=subprocess.STDOUT), node / "run.log"))
    return procs


def wait_for(condition, procs, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        for proc, log in procs:
            assert proc.poll() is None, Path(log).read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.5)  # (each look lists the bucket: the S3 server shares the 2 cores with the nodes)


@pytest.mark.slow
def test_a_spot_job_preempted_twice_by_notices_resumes_from_s3_with_the_losses_of_a_straight_run(
        train_corpus, tmp_path, s3_process, metadata):
    import s3fs

    options, _ = s3_process
    endpoint, url = options["client_kwargs"]["endpoint_url"], "s3://medscale-test/runs/spot"
    fs = s3fs.S3FileSystem(**options)
    run = [f"train.data={train_corpus}", *TINY, "train.max_steps=24", "train.checkpoint_every=3",
           "launch.procs_per_node=1"]
    done = subprocess.run([sys.executable, "-m", "medscale", "cluster", "spot", "--dry-run", "-c", str(MAE_TINY), *run,
                           f"train.run_dir={url}", "launch.nodes=2", "launch.rdzv_endpoint=127.0.0.1:1",
                           "cluster.spot.infra=aws", f"cluster.spot.port={_free_port()}",
                           f"cluster.spot.install={sys.executable} -c 'import medscale'",
                           f"cluster.spot.envs.AWS_ENDPOINT_URL={endpoint}", f"cluster.metadata_url={metadata.url}",
                           "cluster.notice_interval_s=1"],  # (benchmarks/spot.py measures the default 5 s)
                          capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr[-3000:]
    task = yaml.safe_load((tmp_path / "medscale.sky.yaml").read_text())
    recover_on = task["resources"]["job_recovery"]["recover_on_exit_codes"]
    s3_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def log_events():
        fs.invalidate_cache()
        return [json.loads(line) for line in fs.cat_file(f"{url}/log.jsonl").decode().splitlines()] \
            if fs.exists(f"{url}/log.jsonl") else []

    def complete_beyond(step):
        fs.invalidate_cache()
        return any(int(p.split("step-")[1].split("/")[0]) > step for p in fs.glob(f"{url}/checkpoints/step-*/COMPLETE"))

    preempted_at, seconds = [0], []
    for attempt in (1, 2):  # two preemptions on 2 nodes, each after a checkpoint beyond the last preemption
        procs = run_attempt(task, 2, tmp_path / f"attempt{attempt}", s3_env)
        wait_for(lambda: complete_beyond(preempted_at[-1]), procs)
        metadata.notice()
        noticed = time.time()
        wait_for(lambda: fs.exists(f"{url}/preempted.json") and json.loads(fs.cat_file(f"{url}/preempted.json"))[
            "step"] > preempted_at[-1] or fs.invalidate_cache(), procs)
        seconds.append(time.time() - noticed)
        codes = [proc.wait(timeout=180) for proc, _ in procs]
        metadata.noticed = False  # the next attempt runs on new instances
        logs = [Path(log).read_text() for _, log in procs]
        assert codes == [recover_on[0]] * 2, logs[0][-3000:]  # each node's exit code is the one the task recovers on
        assert "spot interruption notice (terminate at" in logs[0]
        preempted_at.append(json.loads(fs.cat_file(f"{url}/preempted.json"))["step"])
    procs = run_attempt(task, 1, tmp_path / "attempt3", s3_env)  # relaunched on one node: resume from s3 alone
    assert procs[0][0].wait(timeout=300) == 0, Path(procs[0][1]).read_text()[-3000:]
    events = log_events()
    resumes = [e for e in events if e["event"] == "resume"]
    assert [e["step"] for e in resumes] == preempted_at[1:]  # each relaunch resumes at its preemption: none redone
    assert resumes[-1]["world_size"] == 1 and "gradient accumulation 1 -> 2" in resumes[-1]["world_size_change"]
    assert [e["step"] for e in events if e["event"] == "scalars"] == list(range(1, 25))  # each step logged once
    straight = run_cmd(torchrun_cmd("-m", "medscale", "pretrain", "-c", str(MAE_TINY), *run,
                                    f"train.run_dir={tmp_path / 'straight'}"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = logged_losses(tmp_path / "straight")
    resumed = {e["step"]: e["train/loss"] for e in events if e["event"] == "scalars"}
    same_world = range(1, preempted_at[-1] + 1)  # on 2 nodes, as the straight run: the same bits
    assert [resumed[s].hex() for s in same_world] == [expected[s].hex() for s in same_world]
    assert max(seconds) < 30, seconds  # notice -> preempted.json in object storage (AWS gives 120 s)
    print(f"notice -> preempted.json in s3: {', '.join(f'{s:.1f} s' for s in seconds)}")
