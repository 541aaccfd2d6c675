"""The evaluation stage's config section (`eval.*`): what to evaluate, each task's protocol and budget, the pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from medscale.core.config import check, check_choice
from medscale.core.executor import EXECUTOR_CHOICES


@dataclass
class RetrievalOptions:
    """The retrieval seed's protocol: query = test split, database = train split."""

    k: int = 5
    distance: str = "cosine"  # cosine | l2 (the seed's code ranks by L2 although its README says cosine)


@dataclass
class KnnOptions:
    """DINO's weighted kNN: votes exp(similarity / temperature) of the k nearest train features."""

    k: int = 20
    temperature: float = 0.07


@dataclass
class LinearProbeOptions:
    """MAE's linear probe on frozen features: BatchNorm (no affine) + Linear, LARS, no weight decay."""

    epochs: int = 90
    blr: float = 0.1  # lr = blr x batch / 256
    batch_size: int = 256
    warmup_epochs: int = 10


@dataclass
class FinetuneOptions:
    """Less-is-More's fine-tuning: Adam, backbone frozen for the first epochs, best validation weights kept."""

    epochs: int = 70
    frozen_epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 5e-4
    batch_size: int = 64


@dataclass
class MlpOptions:
    """MedSAM-pneumonia's MLP on pooled embeddings: early stopping on validation F1, threshold chosen there."""

    hidden: List[int] = field(default_factory=lambda: [128, 64])
    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 10


@dataclass
class DannOptions:
    """Domain adaptation source -> target: a shared trainable layer before the gradient reversal."""

    target: Optional[str] = None  # the target dataset (NAME=PATH or a dataset named in eval.datasets)
    shared: int = 128  # width of the shared feature layer
    epochs: int = 60
    lr: float = 1e-3
    batch_size: int = 32


@dataclass
class EvalConfig:
    """Downstream evaluation (`medscale eval`)."""

    checkpoints: List[str] = field(default_factory=list)  # export folders, run dirs, raw, random:TIMM_NAME|PATH
    tasks: List[str] = field(default_factory=lambda: ["retrieval", "knn", "linear_probe"])
    datasets: List[str] = field(default_factory=list)  # paths or URLs, optionally NAME=PATH
    out: Optional[str] = None  # results.parquet, results.md, tb/, features/, pictures
    label_tag: str = "Modality"  # DICOM folders without labels: the header tag that labels them
    batch_size: int = 128  # feature extraction
    seed: int = 0
    bootstrap: int = 1000  # resamples of the test set for the 95% intervals
    tolerance: float = 0.02  # on-commit: a drop beyond this (and beyond the noise) is a regression
    baseline: Optional[str] = None  # on-commit: compare with this commit (e.g. the merge-base), else the last passing
    executor: str = "auto"  # auto | ray | pool | local
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None
    num_gpus: Optional[float] = None  # GPUs per job; None: a quarter on a local Ray with GPUs, none otherwise
    task_memory_mb: Optional[int] = None  # Ray: memory (MiB) each job reserves: a node runs only as many as fit
    progress: bool = True
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options; never logged
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    knn: KnnOptions = field(default_factory=KnnOptions)
    linear_probe: LinearProbeOptions = field(default_factory=LinearProbeOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    mlp: MlpOptions = field(default_factory=MlpOptions)
    dann: DannOptions = field(default_factory=DannOptions)

    def validate(self, origin: str, tasks: tuple = ()) -> None:
        """Value checks; `tasks` are the registered task names (the root passes them)."""
        for i, name in enumerate(self.tasks):
            if tasks:
                check_choice(name, tasks, origin, f"eval.tasks[{i}]")
        check_choice(self.retrieval.distance, ("cosine", "l2"), origin, "eval.retrieval.distance")
        check(self.retrieval.k >= 1, origin, "eval.retrieval.k", "an int >= 1", self.retrieval.k)
        check(self.knn.k >= 1, origin, "eval.knn.k", "an int >= 1", self.knn.k)
        check(self.knn.temperature > 0, origin, "eval.knn.temperature", "a number > 0", self.knn.temperature)
        check(self.bootstrap >= 0, origin, "eval.bootstrap", "an int >= 0", self.bootstrap)
        check(self.tolerance >= 0, origin, "eval.tolerance", "a number >= 0", self.tolerance)
        check(self.batch_size >= 1, origin, "eval.batch_size", "an int >= 1", self.batch_size)
        check(self.task_memory_mb is None or self.task_memory_mb >= 1, origin, "eval.task_memory_mb",
              "null or an int >= 1 (MiB)", self.task_memory_mb)
        check(self.num_gpus is None or self.num_gpus >= 0, origin, "eval.num_gpus", "null or a number >= 0",
              self.num_gpus)
        check(0 <= self.finetune.frozen_epochs <= self.finetune.epochs, origin, "eval.finetune.frozen_epochs",
              "0..eval.finetune.epochs", self.finetune.frozen_epochs)
        for key in ("linear_probe", "finetune", "dann"):
            epochs = getattr(self, key).epochs
            check(epochs >= 1, origin, f"eval.{key}.epochs", "an int >= 1", epochs)
        check(self.mlp.max_epochs >= 1, origin, "eval.mlp.max_epochs", "an int >= 1", self.mlp.max_epochs)
        check_choice(self.executor, EXECUTOR_CHOICES, origin, "eval.executor")
