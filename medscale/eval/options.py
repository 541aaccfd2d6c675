"""The built-in evaluation tasks' own options, torch-free: each is the section of its task's name (`eval.knn`,
`eval.linear_probe`), assembled from the task registry. A task owns its class (`Options`) and checks its values
(`validate(origin, key)`). A task whose options name a `target` dataset is given that domain too (DANN)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from medscale.core.config import check, check_choice


def _check_epochs(value: int, origin: str, key: str) -> None:
    check(value >= 1, origin, key, "an int >= 1", value)


@dataclass
class RetrievalOptions:
    """The retrieval seed's protocol: query = test split, database = train split."""

    k: int = 5  # neighbours
    distance: str = "cosine"  # cosine | l2 (the seed's code ranks by L2 although its README says cosine)

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        check_choice(self.distance, ("cosine", "l2"), origin, f"{key}.distance")
        check(self.k >= 1, origin, f"{key}.k", "an int >= 1", self.k)


@dataclass
class KnnOptions:
    """DINO's weighted kNN: votes exp(similarity / temperature) of the k nearest train features."""

    k: int = 20  # neighbours
    temperature: float = 0.07  # the votes' temperature

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        check(self.k >= 1, origin, f"{key}.k", "an int >= 1", self.k)
        check(self.temperature > 0, origin, f"{key}.temperature", "a number > 0", self.temperature)


@dataclass
class LinearProbeOptions:
    """MAE's linear probe on frozen features: BatchNorm (no affine) + Linear, LARS, no weight decay."""

    epochs: int = 90  # training epochs
    blr: float = 0.1  # lr = blr x batch / 256
    batch_size: int = 256  # rows per step
    warmup_epochs: int = 10  # linear warmup, then cosine

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_epochs(self.epochs, origin, f"{key}.epochs")


@dataclass
class FinetuneOptions:
    """Less-is-More's fine-tuning: Adam, backbone frozen for the first epochs, best validation weights kept."""

    epochs: int = 70  # training epochs
    frozen_epochs: int = 10  # epochs with the backbone frozen (the head alone)
    lr: float = 1e-4  # Adam's learning rate
    weight_decay: float = 5e-4  # Adam's weight decay
    batch_size: int = 64  # rows per step

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_epochs(self.epochs, origin, f"{key}.epochs")
        check(0 <= self.frozen_epochs <= self.epochs, origin, f"{key}.frozen_epochs", f"0..{key}.epochs",
              self.frozen_epochs)


@dataclass
class MlpOptions:
    """MedSAM-pneumonia's MLP on pooled embeddings: early stopping on validation F1, threshold chosen there."""

    hidden: List[int] = field(default_factory=lambda: [128, 64])  # hidden layer widths
    lr: float = 1e-3  # Adam's learning rate
    batch_size: int = 32  # rows per step
    max_epochs: int = 100  # epochs at most (early stopping on validation F1)
    patience: int = 10  # epochs without a better validation F1 before stopping

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_epochs(self.max_epochs, origin, f"{key}.max_epochs")


@dataclass
class DannOptions:
    """Domain adaptation source -> target: a shared trainable layer before the gradient reversal."""

    target: Optional[str] = None  # the target dataset (NAME=PATH or a dataset named in eval.datasets)
    shared: int = 128  # width of the shared feature layer
    hidden: List[int] = field(default_factory=lambda: [128, 64])  # the label head after it (eval.mlp's by default)
    epochs: int = 60  # training epochs
    lr: float = 1e-3  # Adam's learning rate
    batch_size: int = 32  # rows per step

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_epochs(self.epochs, origin, f"{key}.epochs")
