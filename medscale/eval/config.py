"""The evaluation stage's config section (`eval.*`): what to evaluate, and the pool. Each task's protocol and budget
is its own section (`eval.knn`), added from the task registry (`medscale.eval.registry.eval_config_class`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from medscale.core.config import check, check_choice, validate_sections
from medscale.core.executor import EXECUTOR_CHOICES


@dataclass
class EvalConfig:
    """Downstream evaluation (`medscale eval`)."""

    checkpoints: List[str] = field(default_factory=list)  # export folders, run dirs, raw, random:TIMM_NAME|PATH
    tasks: List[str] = field(  # registered tasks, each run on every (checkpoint, dataset)
        default_factory=lambda: ["retrieval", "knn", "linear_probe"])
    datasets: List[str] = field(default_factory=list)  # paths or URLs, optionally NAME=PATH
    out: Optional[str] = None  # results.parquet, results.md, tb/, features/, pictures
    label_tag: str = "Modality"  # DICOM folders without labels: the header tag that labels them
    batch_size: int = 128  # feature extraction
    seed: int = 0  # heads, bootstrap and pictures
    bootstrap: int = 1000  # resamples of the test set for the 95% intervals
    tolerance: float = 0.02  # on-commit: a drop beyond this (and beyond the noise) is a regression
    baseline: Optional[str] = None  # on-commit: compare with this commit (e.g. the merge-base), else the last passing
    executor: str = "auto"  # auto | ray | pool | local
    ray_address: Optional[str] = None  # None starts a local Ray (executor ray); "auto" or "ray://..." joins a cluster
    num_cpus: Optional[int] = None  # workers of a local Ray or pool; None = all cores
    num_gpus: Optional[float] = None  # GPUs per job; None: a quarter on a local Ray with GPUs, none otherwise
    task_memory_mb: Optional[int] = None  # Ray: memory (MiB) each job reserves: a node runs only as many as fit
    progress: bool = True  # progress bars on standard error
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options; never logged

    def validate(self, origin: str, tasks: tuple = ()) -> None:
        """Value checks, each task's section's own among them; `tasks`: the registered names."""
        for i, name in enumerate(self.tasks):
            if tasks:
                check_choice(name, tasks, origin, f"eval.tasks[{i}]")
        check(self.bootstrap >= 0, origin, "eval.bootstrap", "an int >= 0", self.bootstrap)
        check(self.tolerance >= 0, origin, "eval.tolerance", "a number >= 0", self.tolerance)
        check(self.batch_size >= 1, origin, "eval.batch_size", "an int >= 1", self.batch_size)
        check(self.task_memory_mb is None or self.task_memory_mb >= 1, origin, "eval.task_memory_mb",
              "null or an int >= 1 (MiB)", self.task_memory_mb)
        check(self.num_gpus is None or self.num_gpus >= 0, origin, "eval.num_gpus", "null or a number >= 0",
              self.num_gpus)
        check_choice(self.executor, EXECUTOR_CHOICES, origin, "eval.executor")
        validate_sections(self, tasks, origin, "eval")
