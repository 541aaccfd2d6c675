"""The evaluation pool: every (checkpoint x task x dataset) is a task on Ray (or a local pool for small runs),
features extracted once per (checkpoint, dataset) first; results stream into `OUT/results.parquet/` (a part per
job) and TensorBoard; a job that fails is reported and the others finish; a rerun skips what is present.

    summary = evaluate(cfg.eval)        # medscale eval --checkpoints A B --tasks ... --datasets ... --out DIR
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from medscale.core.errors import ConfigError, MedscaleError
from medscale.core.executor import executor_for, fan_out, per_node, task_resources
from medscale.core.faults import describe
from medscale.core.summary import Summary
from medscale.eval.config import EvalConfig
from medscale.eval.datasets import LabelledSet, load_dataset, parse_dataset
from medscale.eval.features import FeatureSource, features, on_this_node, parse_checkpoints
from medscale.eval.registry import TASKS, create_task, target_of
from medscale.eval.remote import EXPORTS, FEATURES
from medscale.eval.results import ResultStore, job_key, markdown_table, parameters_json, read_results, slug
from medscale.eval.task import TaskInput

logger = logging.getLogger(__name__)
PICTURES = "pictures"
PRELOAD = ("torch", "timm", "medscale.eval.pool", "medscale.eval.retrieval", "medscale.eval.probe",
           "medscale.eval.mlp")  # what a job imports: loaded once per worker, before the first job


@dataclass(frozen=True)
class Job:
    """One (checkpoint, task, dataset)."""

    source: FeatureSource
    task: str
    dataset: str


@dataclass
class EvalSummary(Summary):
    """What an evaluation run did."""

    out: str
    jobs: int = 0
    skipped: int = 0
    failed: List[str] = field(default_factory=list)
    seconds: float = 0.0
    table: str = ""
    nodes: Dict[str, int] = field(default_factory=dict)  # Ray node id -> tasks it ran (a Ray executor only)

    def format(self) -> str:
        """The table, then the counts and failures."""
        lines = [self.table, "", f"medscale eval -> {self.out}: {self.jobs} job(s) run, {self.skipped} already "
                                 f"present, {len(self.failed)} failed, {self.seconds:.0f} s"]
        lines += [f"  {per_node(self.nodes)}"] if per_node(self.nodes) else []
        lines += [f"  FAILED {f}" for f in self.failed]
        return "\n".join(lines)


def git_commit() -> str:
    """The commit results are tagged with: $MEDSCALE_COMMIT, else `git rev-parse HEAD` here, else "unknown"."""
    if os.environ.get("MEDSCALE_COMMIT"):
        return os.environ["MEDSCALE_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return done.stdout.strip()[:40] if done.returncode == 0 else "unknown"


def _threads(executor) -> int:
    """Torch threads per job: one per task in a pool of processes, all cores in-process."""
    return max(1, os.cpu_count() or 1) if type(executor).__name__ == "LocalExecutor" else 1


def extract_job(pair: Tuple[FeatureSource, str], datasets: Dict[str, LabelledSet], cfg: EvalConfig, cache: str,
                threads: int) -> Tuple[str, str]:
    """Features of one (source, dataset) into the cache (a job of the first phase)."""
    import torch

    torch.set_num_threads(threads)
    source, name = on_this_node(pair[0], cfg.storage_options), pair[1]
    with torch.random.fork_rng(devices=[]):  # the caller's random state is not this job's business
        features(source, datasets[name], Path(cache), cfg.batch_size, cfg.seed)
    return source.digest, name


def run_job(job: Job, datasets: Dict[str, LabelledSet], cfg: EvalConfig, cache: str,
            threads: int) -> Dict[str, Any]:
    """One task on one (source, dataset): its metric rows, parameters, wall time and picture."""
    import torch

    torch.set_num_threads(threads)
    task = create_task(job.task, cfg)
    target_spec = target_of(job.task, cfg)
    target = datasets.get(parse_dataset(target_spec)[0]) if target_spec else None
    start = time.perf_counter()
    source = on_this_node(job.source, cfg.storage_options)
    with torch.random.fork_rng(devices=[]):  # tasks seed torch for their heads; the caller's state stays as it was
        output = task.run(TaskInput(
            datasets[job.dataset], source,
            lambda ds: features(source, ds, Path(cache), cfg.batch_size, cfg.seed),
            cfg.seed, cfg.bootstrap, cfg.batch_size, target))
    return {"metrics": output.metrics, "picture": output.picture, "seconds": time.perf_counter() - start,
            "parameters": job_parameters(job.task, cfg, datasets)}


def job_parameters(task: str, cfg: EvalConfig, datasets: Dict[str, LabelledSet]) -> str:
    """A task's parameters as the rerun key stores them (with its target domain's content digest, if it has one)."""
    parameters = create_task(task, cfg).parameters()
    target_spec = target_of(task, cfg)
    if target_spec:
        target = datasets.get(parse_dataset(target_spec)[0])
        parameters["target_digest"] = target.digest if target is not None else None
    return parameters_json(parameters)


def _sources(cfg: EvalConfig, failed: List[str]) -> List[FeatureSource]:
    out = []
    for spec in cfg.checkpoints:
        try:
            out.extend(parse_checkpoints([spec], cfg.seed, cfg.storage_options, Path(cfg.out) / EXPORTS))
        except MedscaleError as exc:
            failed.append(f"{spec}: {exc}")
            logger.error("%s", exc)
    return out


def _datasets(cfg: EvalConfig, failed: List[str]) -> Dict[str, LabelledSet]:
    specs = list(cfg.datasets) + [spec for spec in (target_of(task, cfg) for task in cfg.tasks) if spec]
    out: Dict[str, LabelledSet] = {}
    for spec in specs:
        name, url = parse_dataset(spec)
        if name in out:
            continue
        try:
            out[name] = load_dataset(spec, cfg.storage_options, cfg.label_tag)
        except MedscaleError as exc:
            failed.append(f"{spec}: {exc}")
            logger.error("%s", exc)
    return out


def evaluate(cfg: EvalConfig, per_commit: bool = False) -> EvalSummary:
    """Run every missing (checkpoint x task x dataset) job of `cfg` into `cfg.out` (`per_commit`: missing for
    this commit, as `eval on-commit` asks)."""
    if not cfg.out:
        raise ConfigError("eval.out is not set: where results go, --out DIR (or eval.out=DIR)")
    if not cfg.checkpoints or not cfg.datasets or not cfg.tasks:
        raise ConfigError("eval needs --checkpoints, --datasets and --tasks (eval.checkpoints/datasets/tasks)")
    started = time.perf_counter()
    out = Path(cfg.out)
    summary = EvalSummary(str(out))
    sources, datasets = _sources(cfg, summary.failed), _datasets(cfg, summary.failed)
    names = [parse_dataset(spec)[0] for spec in cfg.datasets]
    store, commit = ResultStore(out), git_commit()
    done = store.done(commit if per_commit else None)
    jobs = []
    for source in sources:
        for task in cfg.tasks:
            params = job_parameters(task, cfg, datasets)
            for name in names:
                if name not in datasets:
                    continue
                if job_key(source.digest, task, datasets[name].digest, params) in done:
                    summary.skipped += 1
                else:
                    jobs.append(Job(source, task, name))
    if jobs:
        _run(jobs, datasets, cfg, out, store, commit, summary)
    store.close()
    rows = read_results(out)  # every writer's rows, this run's among them
    summary.table = markdown_table(rows)
    (out / "results.md").write_text(summary.table + "\n")
    if rows:
        from medscale.eval.pictures import metric_against_step

        metric_against_step(rows, out / PICTURES)
    summary.seconds = time.perf_counter() - started
    return summary


def _run(jobs: List[Job], datasets: Dict[str, LabelledSet], cfg: EvalConfig, out: Path, store: ResultStore,
         commit: str, summary: EvalSummary) -> None:
    import torch

    work = sum(TASKS.load(j.task).cost_seconds for j in jobs)
    # a local Ray on a GPU machine: jobs share the GPUs (4 a GPU); a cluster's tasks ask for none unless the
    # config says so (`eval.num_gpus`), so that a cluster without GPUs still runs them
    gpus = cfg.num_gpus if cfg.num_gpus is not None else (0.25 if torch.cuda.is_available() and not cfg.ray_address
                                                           else 0)
    executor = executor_for(cfg.executor, work, cfg.ray_address, cfg.num_cpus, preload=PRELOAD,
                            task_options=task_resources(cfg.task_memory_mb, gpus))
    cache, threads = str(out / FEATURES), _threads(executor)
    try:
        targets = {j.task: parse_dataset(spec)[0] for j in jobs if (spec := target_of(j.task, cfg))}
        pairs = sorted({(j.source, j.dataset) for j in jobs if TASKS.load(j.task).needs_features} |
                       {(j.source, targets[j.task]) for j in jobs if targets.get(j.task) in datasets},
                       key=lambda p: (p[0].spec, p[1]))
        broken: Dict[Tuple[str, str], str] = {}
        for pair, _, error in fan_out(executor, extract_job, pairs, datasets, cfg, cache, threads,
                                      desc="features", unit="set", progress=cfg.progress):
            if error is not None:
                broken[(pair[0].digest, pair[1])] = describe(error)
        runnable = []
        for job in longest_first(jobs, datasets):
            reason = broken.get((job.source.digest, job.dataset))
            if reason and TASKS.load(job.task).needs_features:
                summary.failed.append(f"{job.source.name} / {job.task} / {job.dataset}: features: {reason}")
            else:
                runnable.append(job)
        for job, result, error in fan_out(executor, run_job, runnable, datasets, cfg, cache, threads,
                                          desc="eval", unit="job", progress=cfg.progress):
            if error is not None:
                summary.failed.append(f"{job.source.name} / {job.task} / {job.dataset}: {describe(error)}")
                logger.error("job %s / %s / %s failed: %s", job.source.name, job.task, job.dataset,
                             describe(error))
                continue
            summary.jobs += 1
            store.add(_rows(job, result, datasets[job.dataset], commit))
            if result["picture"] is not None:
                _save_picture(result["picture"], out / PICTURES / f"{job.task}-{slug(job.source.name)}-"
                                                                   f"{job.dataset}.png")
    except BaseException:
        executor.close(abandon=True)  # an error or a signal: running jobs are not waited for (none committed)
        raise
    summary.nodes = dict(executor.tasks_per_node)
    executor.close()


def longest_first(jobs: List[Job], datasets: Dict[str, LabelledSet]) -> List[Job]:
    """Jobs by estimated cost, longest first (the task's rough seconds x its train split's size), so that a long
    job does not start last and leave the other workers idle at the end."""
    def cost(job: Job) -> float:
        train = datasets[job.dataset].labels.get("train", ())
        return TASKS.load(job.task).cost_seconds * max(1, len(train))
    return sorted(jobs, key=cost, reverse=True)


def _rows(job: Job, result: Dict[str, Any], dataset: LabelledSet, commit: str) -> List[Dict[str, Any]]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    n = len(dataset.labels.get("test", ()))
    return [{"checkpoint": job.source.name, "checkpoint_spec": job.source.spec,
             "checkpoint_digest": job.source.digest, "kind": job.source.kind, "step": job.source.step,
             "task": job.task, "dataset": job.dataset, "dataset_digest": dataset.digest, "metric": m.metric,
             "value": float(m.value), "low": float(m.low), "high": float(m.high), "n": n,
             "seconds": result["seconds"], "commit": commit, "parameters": result["parameters"], "time": stamp}
            for m in result["metrics"]]


def _save_picture(picture: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)

