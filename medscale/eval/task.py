"""The task interface: a task takes what it needs of a job (features, or the model and images) and returns metric
rows with 95% bootstrap intervals, and optionally a picture; the pool owns everything else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from medscale.eval.datasets import LabelledSet
from medscale.eval.features import FeatureSource


@dataclass
class Metric:
    """One figure with its 95% interval (nan where none is computed)."""

    metric: str
    value: float
    low: float = float("nan")
    high: float = float("nan")


@dataclass
class TaskInput:
    """What a job hands its task: the dataset, the source, its features (computed on first use), options."""

    dataset: LabelledSet
    source: FeatureSource
    get_features: Callable[[LabelledSet], Dict[str, np.ndarray]]
    seed: int = 0
    bootstrap: int = 1000
    batch_size: int = 128
    target: Optional[LabelledSet] = None  # dann's target domain

    @property
    def features(self) -> Dict[str, np.ndarray]:
        """{split: [N, D]} of the dataset."""
        return self.get_features(self.dataset)

    @property
    def n_classes(self) -> int:
        """Classes of the dataset (at least the largest label + 1 of any split)."""
        labels = [int(v.max()) + 1 for v in self.dataset.labels.values() if len(v)]
        return max([len(self.dataset.classes)] + labels)


@dataclass
class TaskOutput:
    """Metric rows, and optionally a picture (uint8 `[H, W, 3]`) the pool saves."""

    metrics: List[Metric]
    picture: Optional[np.ndarray] = None


class EvalTask:
    """A registered evaluation task, built as `Task(options, seed, bootstrap)`: its own options (an instance of its
    `Options` dataclass, the `eval.NAME` section; None without one), the seed, the bootstrap's resamples."""

    name = ""
    Options: Optional[type] = None  # its options dataclass: the config section of its name
    needs_features = True  # it works on the cached features (False: it trains the backbone itself)
    cost_seconds = 5.0  # rough CPU-seconds of one job on a small (MedMNIST-sized) set: scheduling, `executor: auto`

    def __init__(self, options: Any = None, seed: int = 0, bootstrap: int = 1000) -> None:
        self.options, self.seed, self.bootstrap = options, seed, bootstrap

    def parameters(self) -> Dict[str, Any]:
        """What defines a result besides checkpoint and dataset (recorded with it; a change re-runs it): the
        task's options, the seed and the bootstrap's resamples."""
        options = dataclasses.asdict(self.options) if self.options is not None else {}
        return {**options, "seed": self.seed, "bootstrap": self.bootstrap}

    def run(self, job: TaskInput) -> TaskOutput:
        """The task's metrics on `job`."""
        raise NotImplementedError
