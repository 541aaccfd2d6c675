"""The trainer never loses or mixes work, with real processes and signals: resume at an epoch's end, a run killed
with SIGKILL resumes with each step logged once, one trainer per run directory (a lease; --force), ranks that die
with their launcher, a checkpoint missing a rank's RNG file is damaged, a bad corpus is one line before DeepSpeed."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medscale.data.service import run_sharding
from tests.conftest import MEDMNIST, needs_mount, one_line_error, shard_config
from tests.trainer.conftest import ENV, REPO, logged_losses, mae_args, run_cmd, torchrun_cmd


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """60 real images of two sources (40 breast ultrasound, 20 chest X-ray): epochs of a few steps."""
    root = tmp_path_factory.mktemp("small")
    for name, count in (("breastmnist", 40), ("pneumoniamnist", 20)):
        data = np.load(MEDMNIST / f"{name}_28.npz")
        np.savez(root / f"{name}.npz", train_images=data["train_images"][:count],
                 train_labels=data["train_labels"][:count])
    run_sharding(shard_config([f"breast={root / 'breastmnist.npz'}", f"chest={root / 'pneumoniamnist.npz'}"],
                              root / "corpus"))
    return root / "corpus"


def _args(corpus, run_dir, *extra):
    return mae_args(corpus, run_dir, "loader.batch_size=10", *extra)


def _hex(losses, steps):
    return [float(losses[s]).hex() for s in steps]


def _start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, **ENV), start_new_session=True)


def _wait_for_step(run_dir, step, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "log.jsonl").exists() and max(logged_losses(run_dir) or [0]) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before step {step}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no step {step} within {timeout} s")


def _wait_for_resumed_steps(run_dir, proc, timeout=300):
    """Until a resumed run has logged a step after its resume event."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        resumed = [i for i, e in enumerate(events) if e["event"] == "resume"]
        if resumed and any(e["event"] == "scalars" for e in events[resumed[-1]:]):
            return
        time.sleep(0.1)
    raise AssertionError(f"no step after a resume within {timeout} s")


def _children(pid):
    """PIDs of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("ranks, extra, per_epoch", [(1, [], 6), (2, ["loader.source_weights.chest=2.0"], 4)])
def test_a_checkpoint_at_an_epochs_end_resumes_into_the_next_epoch(small_corpus, tmp_path, ranks, extra, per_epoch):
    """The stop falls on the last step of an epoch: the rerun goes on into the next epoch with the losses of an
    uninterrupted run (60 samples in batches of 10; with chest weighted 2, 80 samples over 2 ranks)."""
    def launch(*args):
        cmd = _args(small_corpus, *args, *extra)
        return run_cmd(torchrun_cmd(*cmd, ranks=ranks) if ranks > 1 else [sys.executable, *cmd])

    straight = launch(tmp_path / "straight", f"train.max_steps={per_epoch + 2}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = launch(tmp_path / "run", f"train.max_steps={per_epoch + 2}", f"train.stop_at_step={per_epoch}")
    assert first.returncode == 0, first.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{per_epoch:08d}" / "loader.json").read_text())
    assert state["epoch"] == 0 and state["consumed"] == state["num_samples"] * (1 if not extra else 80 / 60)
    again = launch(tmp_path / "run", f"train.max_steps={per_epoch + 2}")
    assert again.returncode == 0, again.stderr[-3000:]
    steps = range(1, per_epoch + 3)
    assert _hex(logged_losses(tmp_path / "run"), steps) == _hex(logged_losses(tmp_path / "straight"), steps)
    longer = launch(tmp_path / "run", f"train.max_steps={per_epoch + 4}")  # a finished run extended
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert sorted(logged_losses(tmp_path / "run")) == list(range(1, per_epoch + 5))


@pytest.mark.slow
def test_a_killed_run_resumes_with_each_step_logged_once(small_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ("train.max_steps=30", "train.checkpoint_every=10", "train.image_every=5")
    straight = run_cmd([sys.executable, *_args(small_corpus, tmp_path / "straight", *args)])
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "run"
    proc = _start([sys.executable, *_args(small_corpus, run_dir, *args)])
    _wait_for_step(run_dir, 14, proc)
    proc.kill()  # SIGKILL: no handler runs; steps after the checkpoint at 10 are logged, then abandoned
    proc.communicate()
    assert max(logged_losses(run_dir)) >= 14
    again = run_cmd([sys.executable, *_args(small_corpus, run_dir, *args)])
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in lines if e["event"] == "scalars"]
    assert steps == list(range(1, 31))  # each once, in order
    assert [e["step"] for e in lines if e["event"] == "resume"] == [10]
    assert _hex(logged_losses(run_dir), range(1, 31)) == _hex(logged_losses(tmp_path / "straight"), range(1, 31))
    weights = "export/backbone.safetensors"
    assert (run_dir / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()  # bit for bit
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})  # 0: keep all
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 31))
    assert [e.step for e in events.Images("reconstruction")] == [5, 10, 15, 20, 25, 30]  # and at checkpoints
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == [f"step-{s:08d}.png" for s in range(5, 31, 5)]


@pytest.mark.slow
def test_one_trainer_per_run_directory(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = _args(small_corpus, run_dir, "train.max_steps=100000", "train.checkpoint_every=5")
    first = _start([sys.executable, *args])
    try:
        _wait_for_step(run_dir, 1, first)
        lease = json.loads((run_dir / "_lock.json").read_text())
        assert lease["holder"] == "medscale pretrain" and lease["pid"] == first.pid
        second = run_cmd([sys.executable, *args])
        line = one_line_error(second)
        assert f"being written by `medscale pretrain` on {lease['host']} (pid {first.pid}" in line and "--force" in line
        assert first.poll() is None
        forced = _start([sys.executable, *args, "--force"])  # breaks the live lease: the first stops at its commit
        try:
            out, err = first.communicate(timeout=120)
            assert first.returncode == 2, err[-3000:]
            assert "another run broke this run's lease" in err and "Traceback" not in err
        finally:
            _wait_for_resumed_steps(run_dir, forced)
            forced.send_signal(signal.SIGTERM)  # now training: it saves and exits 75
            assert forced.wait(timeout=120) == 75
    finally:
        first.kill()
    assert not (run_dir / "_lock.json").exists()  # released by the preempted second trainer


@pytest.mark.slow
def test_ranks_stop_within_seconds_of_losing_their_launcher(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = _args(small_corpus, run_dir, "train.max_steps=40", "train.checkpoint_every=4")
    agent = _start(torchrun_cmd(*args))
    _wait_for_step(run_dir, 6, agent)
    ranks = _children(agent.pid)
    assert len(ranks) == 2
    agent.kill()  # SIGKILL to the agent alone: its ranks live in their own sessions
    agent.communicate()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in ranks):
        time.sleep(0.1)
    assert not any(_alive(p) for p in ranks), "ranks outlived their launcher by 10 s"
    lease = json.loads((run_dir / "_lock.json").read_text())  # left by the killed rank 0: stale, its pid is gone
    assert lease["pid"] in ranks
    again = run_cmd(torchrun_cmd(*args))
    assert again.returncode == 0, again.stderr[-3000:]
    assert max(logged_losses(run_dir)) == 40 and "breaking the stale lease" in again.stderr


@pytest.mark.slow
def test_a_checkpoint_missing_a_ranks_rng_file_is_damaged(straight_run, train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run, run_dir)
    (run_dir / "checkpoints" / "step-00000006" / "rng-rank1.pt").unlink()
    done = run_cmd(torchrun_cmd(*mae_args(train_corpus, run_dir, "train.max_steps=6", "train.checkpoint_every=3")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping damaged checkpoint" in done.stderr and "rng-rank1.pt is missing, on rank 1" in done.stderr
    assert _hex(logged_losses(run_dir), range(1, 7)) == _hex(logged_losses(straight_run), range(1, 7))


V1_CORPUS = Path(__file__).parents[1] / "core" / "v1" / "corpus"


@pytest.mark.parametrize("corpus", ["missing", "empty", "all excluded"])
def test_a_bad_corpus_is_one_line_before_deepspeed_starts(tmp_path, corpus):
    import pyarrow as pa

    from medscale.core.storage import filesystem
    from medscale.data.manifest import read_manifest, update_rows

    path = tmp_path / corpus.replace(" ", "-")
    if corpus == "empty":
        path.mkdir()
    if corpus == "all excluded":  # a contamination check that excluded everything
        shutil.copytree(V1_CORPUS, path)
        fs, root = filesystem(str(path))
        keys = read_manifest(fs, root, ["key"])["key"]
        update_rows(fs, root, pa.table({"key": keys, "status": ["excluded"] * len(keys)}))
    done = run_cmd([sys.executable, *mae_args(path, tmp_path / "run")], timeout=120)
    line = one_line_error(done)
    assert str(path) in line and ("does not exist" in line or "no kept samples" in line)
    assert "DeepSpeed" not in done.stderr and "deepspeed" not in done.stderr


def _store_args(options, *extra):
    return [f"train.storage_options.client_kwargs.endpoint_url={options['client_kwargs']['endpoint_url']}", *extra]


def _two_nodes(args, per_node):
    """Two torchrun agents joined by c10d rendezvous on this machine, one rank each; [(exit code, stderr)]."""
    from tests.conftest import _free_port

    port = _free_port()
    agents = [_start([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                      "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=faults{port}", *args,
                      *per_node(i)]) for i in range(2)]
    return [(agent.wait(timeout=600), agent.stderr.read()) for agent in agents]


def _our_traceback(text):
    """Whether `text` holds a traceback through medscale's code (torchrun prints its own when a rank fails)."""
    return re.search(r'File "[^"]*medscale/[^"]*\.py"', text) is not None


def _errors(text):
    return [line for line in text.splitlines() if line.startswith("medscale: error:")]


@pytest.mark.slow
def test_a_frozen_object_store_is_one_line_within_its_deadline_and_loses_nothing(small_corpus, tmp_path, s3_process):
    import s3fs

    options, server = s3_process
    endpoint, url = options["client_kwargs"]["endpoint_url"], "s3://medscale-test/runs/frozen"
    store = _store_args(options, "train.storage_options.deadline_s=20",
                        "train.storage_options.config_kwargs.read_timeout=4", f"train.local_dir={tmp_path / 'copy'}")
    args = _args(small_corpus, url, "train.max_steps=1000", "train.checkpoint_every=3", *store)
    agent = _start(torchrun_cmd(*args))
    fs = s3fs.S3FileSystem(**options)
    deadline = time.time() + 300
    while not fs.exists(f"{url}/checkpoints/step-00000003/COMPLETE"):
        assert time.time() < deadline and agent.poll() is None, agent.stderr.read()[-3000:]
        time.sleep(0.2)
        fs.invalidate_cache()
    os.kill(server.pid, signal.SIGSTOP)  # connections are accepted, nothing answers
    _, err = agent.communicate(timeout=300)  # today's code waited here forever
    assert agent.returncode != 0
    lines = _errors(err)
    assert len(lines) == 1 and not _our_traceback(err), err[-3000:]  # rank 0 holds the cause and says it
    assert endpoint in lines[0] and url in lines[0] and "another node" not in err  # the operation and the endpoint
    os.kill(server.pid, signal.SIGCONT)
    again = run_cmd(torchrun_cmd(*_args(small_corpus, url, "train.max_steps=1000", "train.stop_at_step=5", *store)))
    assert again.returncode == 0, again.stderr[-3000:]
    straight = run_cmd(torchrun_cmd(*_args(small_corpus, tmp_path / "straight", "train.max_steps=1000",
                                           "train.stop_at_step=5")))
    assert straight.returncode == 0, straight.stderr[-3000:]
    lines = [json.loads(line) for line in fs.cat_file(f"{url}/log.jsonl").decode().splitlines()]
    assert [e["step"] for e in lines if e["event"] == "resume"][-1] == 3
    resumed = {e["step"]: e["train/loss"] for e in lines if e["event"] == "scalars"}
    assert _hex(resumed, range(1, 6)) == _hex(logged_losses(tmp_path / "straight"), range(1, 6))


@needs_mount
@pytest.mark.slow
def test_a_full_disk_on_one_node_is_said_by_its_rank_and_the_rerun_resumes(small_corpus, tmp_path, s3_process):
    options, _ = s3_process
    url, small = "s3://medscale-test/runs/full", tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)  # one checkpoint part
    try:
        args = _args(small_corpus, url, "train.max_steps=9", "train.checkpoint_every=3",
                     *_store_args(options))
        codes = _two_nodes(args, lambda i: [f"train.local_dir={small if i else tmp_path / 'node0'}"])
    finally:
        subprocess.run(["umount", str(small)], check=True)
    (code0, err0), (code1, err1) = codes
    assert code0 != 0 and code1 != 0
    assert not _errors(err0) and len(_errors(err1)) == 1, (err0[-2000:], err1[-2000:])  # said by the rank with it
    line = _errors(err1)[0]
    assert "step-00000006 failed on rank 1: no space left on the device holding" in line  # before torch's own words
    again = _two_nodes(args, lambda i: [f"train.local_dir={tmp_path / f'again{i}'}"])
    assert [code for code, _ in again] == [0, 0], again[1][1][-3000:]
    straight = run_cmd(torchrun_cmd(*_args(small_corpus, tmp_path / "straight", "train.max_steps=9")))
    assert straight.returncode == 0, straight.stderr[-3000:]
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    lines = [json.loads(line) for line in fs.cat_file(f"{url}/log.jsonl").decode().splitlines()]
    assert [e["step"] for e in lines if e["event"] == "resume"] == [3]
    resumed = {e["step"]: e["train/loss"] for e in lines if e["event"] == "scalars"}
    assert _hex(resumed, range(1, 10)) == _hex(logged_losses(tmp_path / "straight"), range(1, 10))
