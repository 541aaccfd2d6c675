"""The evaluation pool with real parts: a local Ray with 2 workers, a failing job beside good ones, rerun
idempotence, TensorBoard read back; `eval watch` picks up a new checkpoint; `eval on-commit` fails on a planted
regression and not on noise."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medscale.eval.pool import evaluate
from medscale.eval.registry import eval_config
from tests.eval.conftest import BREAST, make_export

REPO = Path(__file__).resolve().parents[2]


def _cfg(out, checkpoints, tasks, **kwargs):
    cfg = eval_config(checkpoints=[str(c) for c in checkpoints], tasks=tasks, datasets=[BREAST], out=str(out),
                      bootstrap=100, progress=False, **kwargs)
    cfg.finetune.epochs, cfg.finetune.frozen_epochs = 1, 0
    return cfg


def test_the_pool_on_ray_reports_a_failing_job_and_reruns_nothing(ray_local, tiny_export, tmp_path):
    (tmp_path / "not-an-export").mkdir()
    cfg = _cfg(tmp_path / "out", ["raw", tiny_export, tmp_path / "not-an-export"], ["retrieval", "knn", "finetune"],
               executor="ray")
    summary = evaluate(cfg)
    # raw x finetune fails in its Ray task (raw pixels have no backbone to train); the bad folder fails to parse
    assert summary.jobs == 5 and len(summary.failed) == 2, summary.failed
    assert any("raw pixels" in f and "finetune" in f and "needs a backbone" in f for f in summary.failed)
    assert any("not-an-export" in f and "not an exported backbone" in f for f in summary.failed)
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert {(r["checkpoint"], r["task"]) for r in table} == {
        ("raw pixels", "retrieval"), ("raw pixels", "knn"), ("tiny", "retrieval"), ("tiny", "knn"),
        ("tiny", "finetune")}
    assert all(r["step"] == 7 for r in table if r["checkpoint"] == "tiny") and all(r["commit"] for r in table)
    assert "| raw pixels |" in (tmp_path / "out" / "results.md").read_text().splitlines()[0]
    assert (tmp_path / "out" / "pictures" / "retrieval-tiny-breast.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "tb" / "tiny"))
    events.Reload()
    acc1 = events.Scalars("breast/retrieval/ACC@1")
    assert [e.step for e in acc1] == [7] and acc1[0].value == pytest.approx(
        next(r["value"] for r in table if r["checkpoint"] == "tiny" and r["metric"] == "ACC@1"))
    again = evaluate(cfg)  # a rerun: only the failed job is tried again
    assert again.jobs == 0 and again.skipped == 5 and len(again.failed) == 2
    assert len(pq.read_table(tmp_path / "out" / "results.parquet")) == len(table)


def _eval_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "medscale", "eval", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=dict(os.environ, **(env or {})))


def _checkpoint(run, step, export):
    folder = run / "checkpoints" / f"step-{step:08d}"
    shutil.copytree(export, folder / "export")
    (folder / "meta.json").write_text(json.dumps({"step": step}))
    (folder / "COMPLETE").write_text(f"{step}\n")


@pytest.mark.slow
def test_watch_evaluates_each_new_checkpoint_once(tiny_export, tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    _checkpoint(run, 1, make_export(tmp_path / "e1", seed=1, step=1))
    watcher = subprocess.Popen([sys.executable, "-m", "medscale", "eval", "watch", str(run), "--out", str(out),
                                "--checkpoints", "raw", "--tasks", "retrieval", "--datasets", BREAST,
                                "--interval", "0.5", "eval.bootstrap=50", "eval.progress=false"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "results.parquet").exists():
        time.sleep(0.5)
    _checkpoint(run, 2, make_export(tmp_path / "e2", seed=2, step=2))  # training writes another, then finishes
    (run / "log.jsonl").write_text(json.dumps({"event": "done", "step": 2}) + "\n")
    assert watcher.wait(timeout=240) == 0, watcher.stderr.read()[-2000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    steps = sorted({(r["checkpoint"], r["step"]) for r in rows if r["kind"] == "export"})
    assert steps == [("run@1", 1), ("run@2", 2)]
    assert len([r for r in rows if r["kind"] == "raw"]) == 5  # the baseline once, not once per checkpoint
    assert (out / "pictures" / "retrieval-vs-step.png").exists()
    record = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    assert [e["step"] for e in record] == [1, 2] and all(e["start"] < e["end"] and not e["exit_code"] for e in record)


def _replace_results(out, table):
    """Plant edited results: the folder becomes one results file of the earlier single-file layout (which the next
    run takes in as its first part)."""
    shutil.rmtree(out / "results.parquet")
    table.to_parquet(out / "results.parquet")


@pytest.mark.slow
def test_on_commit_fails_on_a_planted_regression_and_not_on_noise(tiny_export, tmp_path):
    out = tmp_path / "out"
    args = ["on-commit", "--checkpoints", str(tiny_export), "--tasks", "retrieval", "--datasets", BREAST,
            "--out", str(out), "eval.bootstrap=200", "eval.progress=false", "--executor", "local"]
    first = _eval_cli(*args, env={"MEDSCALE_COMMIT": "aaaa"})
    assert first.returncode == 0 and "no passing commit" in first.stdout, first.stderr[-2000:]
    table = pq.read_table(out / "results.parquet").to_pandas()
    noisy = table.copy()
    noisy.loc[noisy.metric == "ACC@1", "value"] += 0.03  # inside the bootstrap interval: noise
    _replace_results(out, noisy)
    second = _eval_cli(*args, env={"MEDSCALE_COMMIT": "bbbb"})
    assert second.returncode == 0 and "no regression" in second.stdout, second.stdout
    planted = pq.read_table(out / "results.parquet").to_pandas()
    planted.loc[(planted.commit == "bbbb") & (planted.metric == "ACC@1"), "value"] += 0.2  # bbbb was much better
    _replace_results(out, planted)
    third = _eval_cli(*args, env={"MEDSCALE_COMMIT": "cccc"})
    assert third.returncode == 1 and "REGRESSION in 1 figure(s)" in third.stdout, third.stdout
    assert "vs bbbb" in third.stdout
    empty = _eval_cli(*args, env={"MEDSCALE_COMMIT": "dddd"})  # an empty commit after the rejected one
    assert empty.returncode == 1 and "REGRESSION in 1 figure(s)" in empty.stdout and "vs bbbb" in empty.stdout
    verdicts = {p.stem: json.loads(p.read_text())["passed"] for p in (out / "commits").iterdir()}
    assert verdicts == {"aaaa": True, "bbbb": True, "cccc": False, "dddd": False}
    merge_base = _eval_cli(*args, "eval.baseline=cccc", env={"MEDSCALE_COMMIT": "eeee"})  # as a pull request would
    assert merge_base.returncode == 0 and "vs cccc" in merge_base.stdout, merge_base.stdout
