"""Run a function over many items: as Ray tasks (local cluster on demand, or an existing one), or in-process.

`fan_out` is the one way a stage fans work out: bounded in-flight tasks, per-item errors, and a progress bar that
moves as tasks finish; `ordered_map` is its all-or-nothing form that keeps the items' order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import deque
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

from tqdm import tqdm

logger = logging.getLogger(__name__)

Outcome = Tuple[Any, Any, Optional[BaseException]]  # (item, result, error)


def _bounded(items: Iterable, limit: int, submit: Callable, wait_any: Callable, result: Callable,
             cancel: Callable) -> Iterator[Outcome]:
    """The loop the executors share: at most `limit` calls in flight (`submit(item)` -> a handle), each outcome
    yielded as its call finishes (`wait_any(handles)` -> finished ones; `result(handle)` raises a call's error).
    When the consumer stops early (an error, a fault), calls still in flight are cancelled (`cancel(handle)`), so
    none goes on writing after the run has let go of its output."""
    pending: dict = {}
    queue = deque(items)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                item = queue.popleft()
                pending[submit(item)] = item
            for handle in wait_any(list(pending)):
                item = pending.pop(handle)
                outcome: Outcome
                try:
                    outcome = (item, result(handle), None)
                except Exception as exc:  # RayTaskError, WorkerCrashedError, BrokenProcessPool...
                    outcome = (item, None, exc)
                yield outcome
    finally:
        for handle in pending:
            cancel(handle)


def import_modules(names: Sequence[str]) -> None:
    """Import `names` in this (worker) process, so that its first real task does not pay for them."""
    import importlib

    for name in names:
        importlib.import_module(name)


def _on_node(fn: Callable, item: Any, *args: Any) -> Tuple[str, Any]:
    """(the Ray node this task ran on, fn(item, *args))."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(item, *args)


class LocalExecutor:
    """Runs every call in this process, one after another (debugging, tiny corpora, tests)."""

    num_cpus = 1

    @property
    def tasks_per_node(self) -> Dict[str, int]:
        """Nothing to count: every call ran here (Ray's executor counts where its tasks ran)."""
        return {}

    def imap_unordered(self, fn: Callable, items: Iterable, *args: Any, max_in_flight: int = 0) -> Iterator[Outcome]:
        """(item, fn(item, *args), None), or (item, None, error) when fn raised."""
        for item in items:
            try:
                yield item, fn(item, *args), None
            except Exception as exc:  # reported per item like a failed Ray task
                yield item, None, exc

    def close(self, abandon: bool = False) -> None:
        """Nothing to release."""


class RayExecutor:
    """Runs calls as Ray tasks, at most `max_in_flight` at once so that memory stays bounded; `tasks_per_node`
    counts the finished tasks of each Ray node (a task whose node was lost is rerun by Ray on another)."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 task_options: Optional[Dict[str, Any]] = None, preload: Sequence[str] = ()) -> None:
        import ray

        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus or os.cpu_count()
            ray.init(**kwargs)
        self.num_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote: Any = None
        self._options = dict(task_options or {})  # each task's resources, e.g. {"num_gpus": 1}
        self.tasks_per_node: Dict[str, int] = {}
        if preload and self._owns and not address:  # a local cluster: start its workers with the task modules
            warm = ray.remote(num_cpus=1)(import_modules)
            ray.get([warm.remote(list(preload)) for _ in range(self.num_cpus)])

    def imap_unordered(self, fn: Callable, items: Iterable, *args: Any, max_in_flight: int = 0) -> Iterator[Outcome]:
        """(item, result, None) as tasks finish, or (item, None, error) for a task that failed after Ray's retries."""
        ray = self._ray
        if self._remote is None:
            self._remote = ray.remote(max_retries=2, **self._options)(_on_node)
        arg_refs = [ray.put(a) for a in args]
        yield from _bounded(items, max_in_flight or 2 * self.num_cpus,
                            lambda item: self._remote.remote(fn, item, *arg_refs),
                            lambda refs: ray.wait(refs, num_returns=1)[0], self._result,
                            lambda ref: ray.cancel(ref, force=True))

    def _result(self, ref: Any) -> Any:
        node, result = self._ray.get(ref)
        self.tasks_per_node[node] = self.tasks_per_node.get(node, 0) + 1
        logger.debug("task done on node %s", node)
        return result

    def close(self, abandon: bool = False) -> None:
        """Shut down the local Ray this executor started (an existing cluster is left running; tasks still running
        there were cancelled when their run let go of them)."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Hide the caller's main script from processes started meanwhile: multiprocessing would re-import it in
    every worker (a script without an `if __name__ == "__main__":` guard would start its work again there). Tasks
    are functions of importable modules, so workers never need it."""
    main = sys.modules.get("__main__")
    saved: Dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__")
                             if main is not None and k in main.__dict__}
    for key in saved:
        setattr(main, key, None) if key == "__spec__" else delattr(main, key)
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


class PoolExecutor:
    """Runs calls in a pool of local processes (forkserver, with the task modules imported once in the server, so
    that workers start in milliseconds): no cluster to start, for one machine and work too small to pay Ray's."""

    @property
    def tasks_per_node(self) -> Dict[str, int]:
        """Nothing to count: every call ran on this machine."""
        return {}

    def __init__(self, num_cpus: Optional[int] = None, preload: Sequence[str] = ()) -> None:
        import multiprocessing
        import time
        from concurrent.futures import ProcessPoolExecutor, wait

        context = multiprocessing.get_context("forkserver")
        if preload:
            context.set_forkserver_preload(list(preload))
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self._pool = ProcessPoolExecutor(self.num_cpus, mp_context=context)
        with _main_module_hidden():  # start every worker now (one per call while none is idle)
            wait([self._pool.submit(time.sleep, 0.05) for _ in range(self.num_cpus)])

    def imap_unordered(self, fn: Callable, items: Iterable, *args: Any, max_in_flight: int = 0) -> Iterator[Outcome]:
        """(item, result, None) as calls finish, or (item, None, error); a worker that died fails every pending
        call with BrokenProcessPool (a fault: the run stops, the rerun resumes)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        yield from _bounded(items, max_in_flight or 2 * self.num_cpus,
                            lambda item: self._pool.submit(fn, item, *args),
                            lambda futures: wait(futures, return_when=FIRST_COMPLETED)[0], lambda f: f.result(),
                            lambda f: f.cancel())

    def close(self, abandon: bool = False) -> None:
        """Stop the worker processes (calls not started are cancelled); `abandon` (the run stops on an error or a
        signal): calls still running are killed rather than waited for."""
        if abandon:
            for process in list(getattr(self._pool, "_processes", {}).values()):  # no public way before 3.14
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


EXECUTORS: Dict[str, type] = {"ray": RayExecutor, "pool": PoolExecutor, "local": LocalExecutor}
EXECUTOR_CHOICES = ("auto", *EXECUTORS)  # what `executor:` keys accept; auto applies `choose_executor`
# measured on a 2-core machine (docs/sharding.md, "Speed"): what each way costs before the first task runs
RAY_START_S = 2.8  # a local Ray cluster (ray.init) and its first tasks, 2.3-5 s
POOL_START_S = 0.7  # a forkserver pool, the sharding modules imported once, workers started


def choose_executor(kind: str, address: Optional[str], work_s: float, num_cpus: Optional[int] = None) -> str:
    """The executor `kind` names; for `auto`, by the estimated work (`work_s` CPU-seconds on one core):
    in-process below twice a pool's start-up, a local pool while Ray's start-up would cost more than 5% of
    the run (wall work < 20 x RAY_START_S), Ray above that or whenever a cluster `address` is given."""
    if kind != "auto":
        return kind
    if address:
        return "ray"
    wall = work_s / max(1, num_cpus or os.cpu_count() or 1)
    if wall < 2 * POOL_START_S:
        return "local"
    return "pool" if wall < 20 * RAY_START_S else "ray"


def task_resources(memory_mb: Optional[int] = None, num_gpus: float = 0) -> Dict[str, Any]:
    """A Ray task's resource request beyond its one CPU: `memory` (bytes; Ray places the task on a node with that
    much unreserved memory, and runs no more there than fit) and a GPU share."""
    request: Dict[str, Any] = {}
    if memory_mb:
        request["memory"] = int(memory_mb) * 2**20
    if num_gpus:
        request["num_gpus"] = num_gpus
    return request


def per_node(tasks_per_node: Dict[str, int]) -> str:
    """"tasks per Ray node: 3f2a1c 40, 9be001 44" (empty when everything ran on one node)."""
    if len(tasks_per_node) < 2:
        return ""
    return "tasks per Ray node: " + ", ".join(f"{node[:6]} {n}" for node, n in sorted(tasks_per_node.items()))


def fan_out(executor, fn: Callable, items: Iterable, *args: Any, desc: Optional[str] = None, unit: str = "it",
            weight: Optional[Callable[[Any], float]] = None, progress: bool = True,
            max_in_flight: int = 0) -> Iterator[Outcome]:
    """(item, fn(item, *args), error) as tasks finish, at most `max_in_flight` at once (0: 2 x CPUs); errors are
    yielded per item, never raised. With `desc`, a progress bar advances by `weight(item)` (default 1) per item."""
    items = list(items)
    total = sum(weight(i) for i in items) if weight else len(items)
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not (progress and desc) or not items)
    try:
        for outcome in executor.imap_unordered(fn, items, *args, max_in_flight=max_in_flight):
            bar.update(weight(outcome[0]) if weight else 1)
            yield outcome
    finally:
        bar.close()


def _indexed(pair: Tuple[int, Any], fn: Callable, *args: Any) -> Tuple[int, Any]:
    return pair[0], fn(pair[1], *args)


def ordered_map(executor, fn: Callable, items: list, *args: Any, desc: Optional[str] = None, unit: str = "it",
                progress: bool = True) -> list:
    """`[fn(item, *args) for item in items]`, fanned out; results in item order whatever order tasks finish in;
    the first failed item's error is raised."""
    results: list = [None] * len(items)
    for _, result, error in fan_out(executor, _indexed, list(enumerate(items)), fn, *args, desc=desc, unit=unit,
                                    progress=progress):
        if error is not None:
            raise error
        results[result[0]] = result[1]
    return results


def create_executor(kind: str, address: Optional[str] = None, num_cpus: Optional[int] = None,
                    preload: Sequence[str] = (), task_options: Optional[Dict[str, Any]] = None):
    """`ray`, `pool` or `local` (see EXECUTORS; resolve `auto` with `choose_executor` first); Ray joins `address`
    when given, else starts (or reuses) a local cluster, each task asking for `task_options` (its resources); a
    pool imports the `preload` modules once."""
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if kind == "local":
        return LocalExecutor()
    if kind == "pool":
        return PoolExecutor(num_cpus, preload)
    return RayExecutor(address, num_cpus, task_options, preload)


def executor_for(kind: str, work_s: float, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 preload: Sequence[str] = (), task_options: Optional[Dict[str, Any]] = None):
    """`create_executor` of what `choose_executor` picks for `work_s` estimated CPU-seconds (logged)."""
    chosen = choose_executor(kind, address, work_s, num_cpus)
    if kind == "auto":
        logger.info("executor auto -> %s (about %.1f CPU-s of work)", chosen, work_s)
    return create_executor(chosen, address, num_cpus, preload, task_options)
