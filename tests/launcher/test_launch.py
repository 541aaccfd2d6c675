"""`medscale launch` for real on this machine: torchrun (a signal, a lost node), two DeepSpeed `--no_ssh` launches,
and a 2-node SLURM cluster (`.ci/slurm up`); every path ends with the exit-code contract (0 done, 75 preempted)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medscale.core.lifeline import descendants
from tests.conftest import _free_port
from tests.trainer.conftest import ENV, MAE_TINY, REPO

TINY = ["train.progress=false", "train.log_every=1", "train.warmup_steps=2", "loader.batch_size=8",
        "loader.num_workers=1", "train.mae.decoder_depth=1", "launch.grace_s=60"]


def overrides(corpus, run_dir, *extra):
    """The tiny MAE on `corpus` into `run_dir`, then `extra`."""
    return [f"train.data={corpus}", f"train.run_dir={run_dir}", *TINY, *extra]


def start(*args, log=None):
    """`medscale launch -c configs/mae-tiny.yaml ARGS` in the background (its output into `log`)."""
    stream = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "medscale", "launch", "-c", str(MAE_TINY), *args], text=True,
                            stdout=stream, stderr=subprocess.STDOUT, env=dict(os.environ, **ENV), cwd=REPO)


def events(run_dir):
    """The run's log.jsonl, parsed."""
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_step(run_dir, step, procs, timeout=300):
    """Until the run has logged `step` (every process in `procs` still running)."""
    deadline = time.time() + timeout
    while not any(e.get("step", 0) >= step and e["event"] == "scalars" for e in events(run_dir)):
        for proc in procs:
            assert proc.poll() is None, f"exited {proc.returncode} before step {step}"
        assert time.time() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.5)


def steps_logged(run_dir):
    """Every step's scalars, in order (a step logged twice would show twice)."""
    return [e["step"] for e in events(run_dir) if e["event"] == "scalars"]


def test_a_signalled_torchrun_launch_exits_75_after_a_save_and_the_rerun_loses_no_step(train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(train_corpus, run_dir, "train.max_steps=12", "train.checkpoint_every=100",
                     "launch.procs_per_node=2")
    launch = start(*args)
    wait_for_step(run_dir, 3, [launch])
    launch.send_signal(signal.SIGUSR1)
    out, _ = launch.communicate(timeout=180)
    assert launch.returncode == 75, out[-3000:]
    record = json.loads((run_dir / "preempted.json").read_text())
    assert record["signal"] == "SIGUSR1" and f"medscale launch: preempted at step {record['step']}" in out
    assert not [p for p in descendants(os.getpid()) if "pretrain" in Path(f"/proc/{p}/cmdline").read_text()]
    again = start(*args)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    resumed = next(e for e in events(run_dir) if e["event"] == "resume")
    assert resumed["step"] == record["step"]  # the preemption's own save: nothing redone
    assert steps_logged(run_dir) == list(range(1, 13))


@pytest.mark.slow
def test_a_sigterm_to_one_of_two_deepspeed_no_ssh_launches_stops_both_with_75(train_corpus, tmp_path):
    run_dir, port = tmp_path / "run", _free_port()
    args = overrides(train_corpus, run_dir, "train.max_steps=10", "train.checkpoint_every=100",
                     "launch.backend=deepspeed", "launch.nodes=2", "launch.procs_per_node=1",
                     f"launch.rdzv_endpoint=127.0.0.1:{port}")

    def both():
        return [start(*args, f"launch.node_rank={rank}", log=tmp_path / f"node{rank}.log") for rank in (0, 1)]

    nodes = both()
    wait_for_step(run_dir, 3, nodes)
    nodes[1].send_signal(signal.SIGTERM)
    codes = [node.wait(timeout=180) for node in nodes]
    assert codes == [75, 75], [(tmp_path / f"node{r}.log").read_text()[-2000:] for r in (0, 1)]
    record = json.loads((run_dir / "preempted.json").read_text())
    assert record["signal"] == "on another rank"  # node 1's rank got it; rank 0 (node 0) wrote the record
    nodes = both()
    assert [node.wait(timeout=300) for node in nodes] == [0, 0]
    assert next(e for e in events(run_dir) if e["event"] == "resume")["step"] == record["step"]
    assert steps_logged(run_dir) == list(range(1, 11))


@pytest.mark.slow
def test_elastic_torchrun_goes_on_at_world_size_1_when_a_node_is_lost(train_corpus, tmp_path):
    run_dir, port, every = tmp_path / "run", _free_port(), 4
    args = overrides(train_corpus, run_dir, "train.max_steps=20", f"train.checkpoint_every={every}",
                     "launch.nodes=1:2", "launch.procs_per_node=1", f"launch.rdzv_endpoint=127.0.0.1:{port}",
                     "launch.rdzv_conf.last_call_timeout=3")
    node0 = start(*args, "launch.node_rank=0", log=tmp_path / "node0.log")
    node1 = start(*args, "launch.node_rank=1", log=tmp_path / "node1.log")
    wait_for_step(run_dir, every + 2, [node0, node1])
    assert events(run_dir)[0]["world_size"] == 2
    lost_at = max(steps_logged(run_dir))
    for pid in [node1.pid, *descendants(node1.pid)]:  # the node is gone: its launch, agent, rank, workers at once
        os.kill(pid, signal.SIGKILL)
    assert node0.wait(timeout=400) == 0, (tmp_path / "node0.log").read_text()[-3000:]
    resumed = next(e for e in events(run_dir) if e["event"] == "resume")
    assert resumed["world_size"] == 1 and "global batch" in resumed["world_size_change"]
    assert lost_at - resumed["step"] <= every + 1  # at most one checkpoint interval redone (+ the step in flight)
    assert next(e for e in events(run_dir) if e["event"] == "done")["step"] == 20


def _slurm_nodes_idle():
    try:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return done.stdout.split().count("idle") if done.returncode == 0 else 0


@pytest.fixture
def slurm():
    """A running 2-node SLURM cluster (`.ci/slurm up` starts one as root: CI does)."""
    deadline = time.time() + (60 if shutil.which("sinfo") else 0)  # a previous test's job may still be ending
    while _slurm_nodes_idle() < 2 and time.time() < deadline:
        time.sleep(1)
    if _slurm_nodes_idle() < 2:
        pytest.skip("no 2-node SLURM cluster with idle nodes here: `.ci/slurm up` (as root) starts one")


def job_state(job):
    """{JobState, Restarts, ExitCode, ...} of a SLURM job, from `scontrol show job`."""
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def wait_for_state(job, states, timeout):
    deadline = time.time() + timeout
    while (state := job_state(job)).get("JobState") not in states:
        assert time.time() < deadline, f"job {job} still {state.get('JobState')} after {timeout} s"
        time.sleep(1)
    return state


def submit(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "medscale", "launch", "-c", str(MAE_TINY), "launch.backend=slurm",
                           *args], capture_output=True, text=True, env=dict(os.environ, **ENV), cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split("submitted SLURM job ")[1].split(":")[0]


@pytest.mark.slow
def test_a_slurm_job_preempted_by_its_warning_signal_requeues_resumes_and_completes(slurm, train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    job = submit(*overrides(train_corpus, run_dir, "train.max_steps=16", "train.checkpoint_every=100",
                            "launch.nodes=2", "launch.procs_per_node=1", f"launch.rdzv_endpoint=n1:{_free_port()}",
                            f"launch.slurm.output={tmp_path}/job-%j.log"), cwd=tmp_path)
    try:
        wait_for_state(job, ("RUNNING",), 120)
        deadline = time.time() + 300
        while not steps_logged(run_dir) or max(steps_logged(run_dir)) < 3:
            assert time.time() < deadline and job_state(job)["JobState"] == "RUNNING", job_state(job)
            time.sleep(0.5)
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
        state = wait_for_state(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 600)
    finally:
        subprocess.run(["scancel", job])
    log = (tmp_path / f"job-{job}.log").read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", log[-3000:]
    assert "attempt 1 on" in log and "attempt 2 on" in log  # both attempts in one log (--open-mode=append)
    record = json.loads((run_dir / "preempted.json").read_text())
    resume = next(e for e in events(run_dir) if e["event"] == "resume")
    assert resume["step"] == record["step"] and resume["world_size"] == 2
    assert steps_logged(run_dir) == list(range(1, 17))


@pytest.mark.slow
def test_a_slurm_job_that_fails_on_its_own_is_not_requeued(slurm, tmp_path, train_corpus):
    job = submit(f"train.data={train_corpus}", f"train.run_dir={tmp_path / 'run'}", *TINY, "launch.nodes=2",
                 "train.model=no_such_timm_model", "launch.max_restarts=0",
                 f"launch.slurm.output={tmp_path}/job-%j.log", cwd=tmp_path)
    state = wait_for_state(job, ("COMPLETED", "FAILED", "CANCELLED"), 300)
    log = (tmp_path / f"job-{job}.log").read_text()
    assert state["JobState"] == "FAILED" and state["Restarts"] == "0", log[-3000:]
    assert "medscale launch: failed (exit code" in log and "requeued" not in log
