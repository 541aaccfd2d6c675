"""Run a function over many items: as Ray tasks (local cluster on demand, or an existing one), or in-process.

`fan_out` is the one way a stage fans work out: bounded in-flight tasks, per-item errors, and a progress bar that
moves as tasks finish; `ordered_map` is its all-or-nothing form that keeps the items' order.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from tqdm import tqdm

logger = logging.getLogger(__name__)

Outcome = Tuple[Any, Any, Optional[BaseException]]  # (item, result, error)


class LocalExecutor:
    """Runs every call in this process, one after another (debugging, tiny corpora, tests)."""

    num_cpus = 1

    def imap_unordered(self, fn: Callable, items: Iterable, *args: Any, max_in_flight: int = 0) -> Iterator[Outcome]:
        """(item, fn(item, *args), None), or (item, None, error) when fn raised."""
        for item in items:
            try:
                yield item, fn(item, *args), None
            except Exception as exc:  # reported per item like a failed Ray task
                yield item, None, exc

    def close(self) -> None:
        """Nothing to release."""


class RayExecutor:
    """Runs calls as Ray tasks, at most `max_in_flight` at once so that memory stays bounded."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
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
        self._remote: dict = {}

    def imap_unordered(self, fn: Callable, items: Iterable, *args: Any, max_in_flight: int = 0) -> Iterator[Outcome]:
        """(item, result, None) as tasks finish, or (item, None, error) for a task that failed after Ray's retries."""
        ray = self._ray
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(max_retries=2)(fn)
        arg_refs = [ray.put(a) for a in args]
        limit = max_in_flight or 2 * self.num_cpus
        pending: dict = {}
        queue = deque(items)
        while queue or pending:
            while queue and len(pending) < limit:
                item = queue.popleft()
                pending[remote.remote(item, *arg_refs)] = item
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    yield item, ray.get(ref), None
                except Exception as exc:  # RayTaskError, WorkerCrashedError...
                    yield item, None, exc

    def close(self) -> None:
        """Shut down the local Ray this executor started (an existing cluster is left running)."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


EXECUTORS: Dict[str, type] = {"ray": RayExecutor, "local": LocalExecutor}


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


def create_executor(kind: str, address: Optional[str] = None, num_cpus: Optional[int] = None):
    """`ray` or `local` (see EXECUTORS); Ray joins `address` when given, else starts (or reuses) a local cluster."""
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if kind == "local":
        return LocalExecutor()
    return RayExecutor(address, num_cpus)
