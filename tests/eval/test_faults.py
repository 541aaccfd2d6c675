"""Evaluations keep every row and leave nothing behind: two evaluations on one folder, a results file of the
earlier layout read as the first part, a killed `medscale eval` leaves no process, a killed watch leaves no
credentials on disk."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medscale.core.lifeline import descendants
from medscale.eval.results import ResultStore, read_results, write_part
from tests.eval.conftest import BREAST, PNEUMONIA

REPO = Path(__file__).resolve().parents[2]


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "medscale", "eval", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _row(checkpoint, task):
    return {"checkpoint": checkpoint, "checkpoint_digest": checkpoint, "kind": "export", "step": 1, "task": task,
            "dataset": "breast", "dataset_digest": "d", "metric": "ACC@1", "value": 0.5, "low": 0.4, "high": 0.6,
            "commit": "c", "parameters": "{}", "time": "t"}


def test_a_results_file_of_the_earlier_layout_becomes_the_first_part(tmp_path):
    write_part(tmp_path / "old", [_row("a", "knn")])
    part = next((tmp_path / "old" / "results.parquet").iterdir())
    part.rename(tmp_path / "results.parquet")  # one Parquet file, as earlier versions wrote
    store = ResultStore(tmp_path)
    assert (tmp_path / "results.parquet").is_dir() and [r["checkpoint"] for r in store.rows] == ["a"]
    store.add([_row("b", "knn")])
    assert [r["checkpoint"] for r in read_results(tmp_path)] == ["a", "b"]
    assert pq.read_table(tmp_path / "results.parquet").num_rows == 2  # one table to pyarrow and pandas
    assert not [p for p in (tmp_path / "results.parquet").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_two_evaluations_on_one_folder_keep_every_row(tmp_path):
    out = tmp_path / "out"
    common = ["--out", str(out), "--checkpoints", "raw", "--executor", "local", "eval.bootstrap=50",
              "eval.progress=false"]
    runs = [_start("--tasks", "retrieval", "knn", "--datasets", BREAST, *common),
            _start("--tasks", "knn", "linear_probe", "--datasets", PNEUMONIA, *common)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-2000:]
    rows = read_results(out)
    assert {(r["task"], r["dataset"]) for r in rows} == {("retrieval", "breast"), ("knn", "breast"),
                                                         ("knn", "pneumonia"), ("linear_probe", "pneumonia")}
    table = (out / "results.md").read_text()  # the table of whichever finished last holds both runs
    assert "| breast | retrieval |" in table or "| pneumonia | linear_probe |" in table


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _running(pid, started):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z" and int(stat[19]) == started


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_evaluation_leaves_no_process_behind(tmp_path, how):
    run = _start("--checkpoints", "random:resnet18", "--tasks", "finetune", "--datasets", BREAST, "--out",
                 str(tmp_path / "out"), "--executor", "pool", "eval.progress=false")
    deadline, helpers = time.time() + 120, {}
    while time.time() < deadline and len(helpers) < 4:  # the resource tracker, the forkserver, 2 workers
        helpers = {p: t for p, t in descendants(run.pid).items()}
        time.sleep(0.5)
    assert len(helpers) >= 4, helpers
    time.sleep(3)  # the workers are fine-tuning now
    run.send_signal(how)
    run.communicate(timeout=120)
    deadline = time.time() + 15
    while time.time() < deadline and [p for p, t in helpers.items() if _running(p, t)]:
        time.sleep(0.2)
    assert not [p for p, t in helpers.items() if _running(p, t)], "helpers outlived the evaluation"
    if how == signal.SIGTERM:
        assert run.returncode == 130


@pytest.mark.slow
def test_a_killed_watch_leaves_no_credentials_on_disk(tiny_export, tmp_path):
    import json
    import shutil

    run, out, secret = tmp_path / "run", tmp_path / "out", "SECRET-do-not-write-7f3a"
    folder = run / "checkpoints" / "step-00000001"
    shutil.copytree(tiny_export, folder / "export")
    (folder / "meta.json").write_text(json.dumps({"step": 1}))
    (folder / "COMPLETE").write_text("1\n")
    watcher = _start("watch", str(run), "--out", str(out), "--checkpoints", "random:resnet18", "--tasks", "finetune",
                     "--datasets", BREAST, "--interval", "0.5", "eval.progress=false", "--executor", "local",
                     f"eval.storage_options.secret={secret}")
    deadline = time.time() + 120
    while time.time() < deadline and not any("eval -c -" in _cmdline(p) for p in descendants(watcher.pid)):
        time.sleep(0.2)
    time.sleep(1)
    child = descendants(watcher.pid)
    watcher.kill()  # mid-evaluation: no handler runs
    watcher.communicate(timeout=60)
    time.sleep(3)
    assert not [p for p, t in child.items() if _running(p, t)]  # its evaluation stopped with it
    written = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert written == []
