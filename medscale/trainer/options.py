"""The built-in methods' own options, torch-free so that the config is checked without importing torch: each is
the section of its method's name (`train.mae`, `train.swav`), assembled from the method registry. A method owns
its class (`Options`) and checks its values (`validate(origin, key)`, `key` being where the section sits)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medscale.core.config import check


@dataclass
class HeadOptions:
    """An MLP head (projector or predictor): `layers` Linear layers, `hidden_dim` wide, BatchNorm + ReLU between."""

    hidden_dim: int = 2048  # width of the hidden layers
    out_dim: int = 128  # output width
    layers: int = 2  # Linear layers
    batch_norm: bool = True  # BatchNorm1d after each hidden Linear (off: a head without batch statistics)

    def validate(self, origin: str, key: str) -> None:
        """Value checks; `key` is where the head sits (`train.simclr.projector`)."""
        check(self.hidden_dim >= 1, origin, f"{key}.hidden_dim", "an int >= 1", self.hidden_dim)
        check(self.out_dim >= 1, origin, f"{key}.out_dim", "an int >= 1", self.out_dim)
        check(self.layers >= 1, origin, f"{key}.layers", "an int >= 1", self.layers)


def _head(hidden: int, out: int, layers: int = 2, batch_norm: bool = True):
    return field(default_factory=lambda: HeadOptions(hidden, out, layers, batch_norm))


def _check_temperature(value: float, origin: str, key: str) -> None:
    check(value > 0, origin, f"{key}.temperature", "a number > 0", value)


def _check_momentum(value: float, origin: str, key: str) -> None:
    check(0 <= value <= 1, origin, f"{key}.momentum", "a number in [0, 1]", value)


MAE_POOLS = ("token", "avg")  # timm's global_pool values an MAE export may carry


@dataclass
class MaeOptions:
    """MAE (the MedMAE recipe): masking, decoder, loss."""

    mask_ratio: float = 0.75  # share of patches removed
    decoder_dim: int = 512  # MedMAE: 512 wide, 8 deep, 16 heads for every encoder size
    decoder_depth: int = 8  # decoder blocks
    decoder_heads: int = 16  # decoder attention heads (a divisor of decoder_dim)
    norm_pix_loss: bool = True  # per-patch normalised targets (the recommended recipe)
    pool: str = "token"  # the exported encoder's feature: token (the cls token) or avg (mean of the patch tokens)

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        check(0.0 < self.mask_ratio < 1.0, origin, f"{key}.mask_ratio", "a number in (0, 1)", self.mask_ratio)
        check(self.pool in MAE_POOLS, origin, f"{key}.pool", " or ".join(MAE_POOLS), self.pool)
        check(self.decoder_dim % self.decoder_heads == 0, origin, f"{key}.decoder_heads",
              f"a divisor of {key}.decoder_dim", self.decoder_heads)


@dataclass
class SimclrOptions:
    """SimCLR (Chen et al. 2020): NT-Xent over both views, negatives from every rank."""

    temperature: float = 0.1  # the softmax temperature of the loss
    projector: HeadOptions = _head(2048, 128)

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_temperature(self.temperature, origin, key)
        self.projector.validate(origin, f"{key}.projector")


@dataclass
class MocoOptions:
    """MoCo v2 (Chen et al. 2020): momentum key encoder, a queue of negatives, InfoNCE."""

    temperature: float = 0.07  # the softmax temperature of the loss
    momentum: float = 0.999  # key encoder EMA, constant
    queue_size: int = 65536  # negatives kept from earlier batches
    symmetric: bool = False  # MoCo v2 is asymmetric (queries of view 1, keys of view 2); true: both ways
    shuffle_bn: bool = True  # shuffle the key batch across ranks (per-rank BatchNorm only; no-op on 1 rank)
    projector: HeadOptions = _head(2048, 128, 2, False)

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_temperature(self.temperature, origin, key)
        _check_momentum(self.momentum, origin, key)
        check(self.queue_size >= 1, origin, f"{key}.queue_size", "an int >= 1", self.queue_size)
        self.projector.validate(origin, f"{key}.projector")


@dataclass
class Mocov3Options:
    """MoCo v3 (Chen et al. 2021): momentum encoder + predictor, in-batch negatives from every rank (the ViT
    recipe)."""

    temperature: float = 0.2  # the softmax temperature of the loss
    momentum: float = 0.99  # rises to 1 along a cosine over the run
    freeze_patch_embed: bool = True  # a random fixed patch projection: MoCo v3's fix for ViT instability
    projector: HeadOptions = _head(4096, 256, 3)
    predictor: HeadOptions = _head(4096, 256, 2)

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_temperature(self.temperature, origin, key)
        _check_momentum(self.momentum, origin, key)
        self.projector.validate(origin, f"{key}.projector")
        self.predictor.validate(origin, f"{key}.predictor")


@dataclass
class ByolOptions:
    """BYOL (Grill et al. 2020): online network + predictor regress an EMA target; no negatives."""

    momentum: float = 0.996  # the target's EMA momentum, rising to 1 along a cosine over the run
    projector: HeadOptions = _head(4096, 256)
    predictor: HeadOptions = _head(4096, 256)

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_momentum(self.momentum, origin, key)
        self.projector.validate(origin, f"{key}.projector")
        self.predictor.validate(origin, f"{key}.predictor")


@dataclass
class SwavOptions:
    """SwAV (Caron et al. 2020): online clustering onto prototypes, Sinkhorn-Knopp codes, swapped prediction over
    multi-crop views."""

    prototypes: int = 3000  # the Less-is-More study: 500
    temperature: float = 0.1  # the softmax temperature of the loss
    sinkhorn_eps: float = 0.05  # the entropy regularisation of the codes
    sinkhorn_iters: int = 3  # Sinkhorn-Knopp iterations per batch
    small_crops: int = 6  # small views asked of the loader unless loader.small_crops is set (0: two views only)
    freeze_prototypes_steps: int = 313  # no gradient into the prototypes during the first steps
    queue_size: int = 0  # per-rank feature queue for the codes (SwAV: 3840 for small batches); 0: none
    queue_start_step: int = 0  # the step from which the queue is used
    projector: HeadOptions = _head(2048, 128)

    def validate(self, origin: str, key: str) -> None:
        """Value checks."""
        _check_temperature(self.temperature, origin, key)
        check(self.prototypes >= 2, origin, f"{key}.prototypes", "an int >= 2", self.prototypes)
        check(self.sinkhorn_eps > 0, origin, f"{key}.sinkhorn_eps", "a number > 0", self.sinkhorn_eps)
        check(self.sinkhorn_iters >= 1, origin, f"{key}.sinkhorn_iters", "an int >= 1", self.sinkhorn_iters)
        for name in ("small_crops", "freeze_prototypes_steps", "queue_size", "queue_start_step"):
            check(getattr(self, name) >= 0, origin, f"{key}.{name}", "an int >= 0", getattr(self, name))
        self.projector.validate(origin, f"{key}.projector")
