"""Checkpoints in object storage (a moto S3 server on 127.0.0.1): run directories and exports read through fsspec
by the run directory's contract; `eval watch s3://...` evaluates each checkpoint once, also across a restart."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from medscale.eval.features import parse_checkpoints
from medscale.eval.remote import complete_checkpoints, read_events
from tests.eval.conftest import BREAST, make_export
from tests.eval.test_pool import REPO

ROOT = "medscale-test/eval-remote"  # this module's prefix in the session's bucket


def put_checkpoint(fs, run, step, export, complete=True):
    """A checkpoint folder as the trainer uploads it: the export, meta.json, then (if `complete`) the marker."""
    folder = f"{run}/checkpoints/step-{step:08d}"
    fs.put(str(export) + "/", f"{folder}/export/", recursive=True)
    fs.pipe(f"{folder}/meta.json", json.dumps({"step": step}).encode())
    if complete:
        fs.pipe(f"{folder}/COMPLETE", f"{step}\n".encode())


def test_a_run_directory_and_an_export_in_s3_are_read_by_the_contract(s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    run = f"{ROOT}/runs/contract"
    put_checkpoint(fs, run, 3, make_export(tmp_path / "e3", seed=3, step=3))
    put_checkpoint(fs, run, 6, make_export(tmp_path / "e6", seed=6, step=6), complete=False)  # still uploading
    fs.pipe(f"{run}/log.jsonl", b'{"event": "start", "step": 0}\n{"event": "checkpoint", "step": 3}\n')
    assert complete_checkpoints(f"s3://{run}", s3_server) == [f"s3://{run}/checkpoints/step-00000003"]
    assert [e["event"] for e in read_events(f"s3://{run}", s3_server)] == ["start", "checkpoint"]
    sources = parse_checkpoints([f"s3://{run}", f"s3://{run}/checkpoints/step-00000006/export"], 0, s3_server,
                                tmp_path / "exports")
    assert [(s.name, s.step) for s in sources] == [("contract@3", 3), ("step-00000006", 6)]
    local = parse_checkpoints([str(tmp_path / "e3")])[0]
    assert sources[0].digest == local.digest  # the same weights, wherever they were read from
    again = parse_checkpoints([f"s3://{run}"], 0, s3_server, tmp_path / "exports")  # copied once, then reused
    assert again[0].path == sources[0].path and len(list((tmp_path / "exports").iterdir())) == 2


@pytest.mark.slow
def test_watch_on_s3_evaluates_each_checkpoint_once_also_after_a_restart(s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    run, out = f"{ROOT}/runs/spot", tmp_path / "out"
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_server["client_kwargs"]["endpoint_url"])  # the AWS chain's endpoint
    command = [sys.executable, "-m", "medscale", "eval", "watch", f"s3://{run}", "--out", str(out), "--tasks",
               "retrieval", "--datasets", BREAST, "--interval", "0.5", "eval.bootstrap=50", "eval.progress=false",
               "--executor", "local"]
    watcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)  # started before the run wrote anything
    put_checkpoint(fs, run, 1, make_export(tmp_path / "e1", seed=1, step=1))
    deadline = time.time() + 240
    while not (out / "watch.jsonl").exists():
        assert time.time() < deadline and watcher.poll() is None, watcher.stderr.read()[-2000:]
        time.sleep(0.5)
    watcher.send_signal(signal.SIGKILL)  # the watcher's node is lost
    watcher.wait()
    put_checkpoint(fs, run, 2, make_export(tmp_path / "e2", seed=2, step=2))
    fs.pipe(f"{run}/log.jsonl", b'{"event": "start", "step": 0}\n{"event": "done", "step": 2}\n')
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted({(r["checkpoint"], r["step"]) for r in rows}) == [("spot@1", 1), ("spot@2", 2)]
    assert len(rows) == 2 * len([r for r in rows if r["checkpoint"] == "spot@1"])  # no job twice
    record = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    assert [(e["run"], e["step"]) for e in record] == [("spot", 1), ("spot", 2)]  # step 1 not evaluated again


def test_results_written_to_s3_are_pulled_by_the_rerun_which_runs_nothing_again(s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    put_checkpoint(fs, f"{ROOT}/runs/mae", 3, make_export(tmp_path / "e3", seed=3, step=3))
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_server["client_kwargs"]["endpoint_url"])
    command = [sys.executable, "-m", "medscale", "eval", "--checkpoints", f"s3://{ROOT}/runs/mae", "--tasks",
               "retrieval", "--datasets", BREAST, "--out", f"s3://{ROOT}/eval", "--executor", "local",
               "eval.bootstrap=50", "eval.progress=false", "--json"]
    runs = []
    for home in ("machine-a", "machine-b"):  # the second on another machine: nothing staged there
        done = subprocess.run(command, cwd=REPO, env=dict(env, HOME=str(tmp_path / home)), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert (runs[0]["jobs"], runs[1]["jobs"], runs[1]["skipped"]) == (1, 0, 1)
    assert runs[0]["out"] == f"s3://{ROOT}/eval"
    parts = fs.glob(f"{ROOT}/eval/results.parquet/part-*.parquet")
    assert len(parts) == 1 and fs.exists(f"{ROOT}/eval/results.md") and not fs.exists(f"{ROOT}/eval/exports")
    assert fs.glob(f"{ROOT}/eval/tb/*/events.out.tfevents.*")  # TensorBoard reads it from there too
