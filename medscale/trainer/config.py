"""The trainer's config section (`train.*`): the run, the schedule, the engine, and each method's own options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from medscale.core.config import check, check_choice

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
ENGINE_OWNED = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "scheduler"}
ZERO_STAGES = (0, 1, 2, 3)
RESUME_MODES = ("auto", "never")  # or a checkpoint folder


@dataclass
class MaeOptions:
    """MAE (the MedMAE recipe): masking, decoder, loss."""

    mask_ratio: float = 0.75
    decoder_dim: int = 512  # MedMAE: 512 wide, 8 deep, 16 heads for every encoder size
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True  # per-patch normalised targets (the recommended recipe)


@dataclass
class HeadOptions:
    """An MLP head (projector or predictor): `layers` Linear layers, `hidden_dim` wide, BatchNorm + ReLU between."""

    hidden_dim: int = 2048
    out_dim: int = 128
    layers: int = 2
    batch_norm: bool = True  # BatchNorm1d after each hidden Linear (off: a head without batch statistics)

    def validate(self, origin: str, key: str) -> None:
        """Value checks; `key` is where the head sits (`train.simclr.projector`)."""
        check(self.hidden_dim >= 1, origin, f"{key}.hidden_dim", "an int >= 1", self.hidden_dim)
        check(self.out_dim >= 1, origin, f"{key}.out_dim", "an int >= 1", self.out_dim)
        check(self.layers >= 1, origin, f"{key}.layers", "an int >= 1", self.layers)


def _head(hidden: int, out: int, layers: int = 2, batch_norm: bool = True):
    return field(default_factory=lambda: HeadOptions(hidden, out, layers, batch_norm))


@dataclass
class SimclrOptions:
    """SimCLR (Chen et al. 2020): NT-Xent over both views, negatives from every rank."""

    temperature: float = 0.1
    projector: HeadOptions = _head(2048, 128)


@dataclass
class MocoOptions:
    """MoCo v2 (Chen et al. 2020): momentum key encoder, a queue of negatives, InfoNCE."""

    temperature: float = 0.07
    momentum: float = 0.999  # key encoder EMA, constant
    queue_size: int = 65536
    symmetric: bool = False  # MoCo v2 is asymmetric (queries of view 1, keys of view 2); true: both ways
    shuffle_bn: bool = True  # shuffle the key batch across ranks (per-rank BatchNorm only; no-op on 1 rank)
    projector: HeadOptions = _head(2048, 128, 2, False)


@dataclass
class Mocov3Options:
    """MoCo v3 (Chen et al. 2021): momentum encoder + predictor, in-batch negatives from every rank (the ViT
    recipe)."""

    temperature: float = 0.2
    momentum: float = 0.99  # rises to 1 along a cosine over the run
    freeze_patch_embed: bool = True  # a random fixed patch projection: MoCo v3's fix for ViT instability
    projector: HeadOptions = _head(4096, 256, 3)
    predictor: HeadOptions = _head(4096, 256, 2)


@dataclass
class ByolOptions:
    """BYOL (Grill et al. 2020): online network + predictor regress an EMA target; no negatives."""

    momentum: float = 0.996  # the target's EMA momentum, rising to 1 along a cosine over the run
    projector: HeadOptions = _head(4096, 256)
    predictor: HeadOptions = _head(4096, 256)


@dataclass
class SwavOptions:
    """SwAV (Caron et al. 2020): online clustering onto prototypes, Sinkhorn-Knopp codes, swapped prediction over
    multi-crop views."""

    prototypes: int = 3000  # the Less-is-More study: 500
    temperature: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    small_crops: int = 6  # small views asked of the loader unless loader.small_crops is set (0: two views only)
    freeze_prototypes_steps: int = 313  # no gradient into the prototypes during the first steps
    queue_size: int = 0  # per-rank feature queue for the codes (SwAV: 3840 for small batches); 0: none
    queue_start_step: int = 0  # the step from which the queue is used
    projector: HeadOptions = _head(2048, 128)


@dataclass
class TrainConfig:
    """Pre-training (`medscale pretrain`): corpus, run directory, method, backbone, schedule, engine."""

    data: Optional[str] = None  # the corpus: a `medscale shard` output (folder or s3://)
    run_dir: Optional[str] = None  # config, checkpoints, export, TensorBoard run, JSON log (a folder or s3://)
    storage_options: Dict[str, Any] = field(default_factory=dict)  # fsspec options for run_dir; never logged
    local_dir: Optional[str] = None  # this node's copy of a remote run_dir (default ~/.cache/medscale/runs/...)
    resume: str = "auto"  # auto: from run_dir's newest checkpoint | never: refuse a run_dir with checkpoints |
    # a checkpoint folder (RUN/checkpoints/step-N): start from it (weights, optimizer, position) in a fresh run_dir
    method: str = "mae"  # a registered method (medscale.trainer.methods.METHODS)
    model: str = "vit_tiny_patch16_224"  # a timm model name
    patch_size: int = 16
    in_chans: int = 3
    max_steps: int = 1000  # the schedule's length (optimizer steps)
    stop_at_step: Optional[int] = None  # stop, save and exit 0 after this step; the schedule is unchanged
    warmup_steps: int = 40
    blr: float = 1.5e-4  # lr = blr x effective batch / 256 (MAE's rule)
    min_lr: float = 0.0
    weight_decay: float = 0.05  # not on biases, norms, position embeddings or cls/mask tokens
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])  # Adam-type optimizers
    optimizer: str = "adamw"  # adamw (DeepSpeed's fused AdamW) | any timm optimizer name: lars, lamb, sgd, momentum...
    momentum: float = 0.9  # SGD-type optimizers (sgd, momentum, lars)
    grad_accum: int = 1
    clip_grad: float = 0.0  # 0: no clipping
    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPUs that have it, fp32 on CPU | fp32 | fp16 (loss scaling) | bf16
    seed: int = 0
    checkpoint_every: int = 100
    keep_last: int = 3
    log_every: int = 10  # steps between TensorBoard scalars
    image_every: int = 0  # steps between reconstruction grids besides those at checkpoints (0: checkpoints only)
    progress: bool = True
    deepspeed: Dict[str, Any] = field(default_factory=dict)  # extra DeepSpeed config keys, merged last
    mae: MaeOptions = field(default_factory=MaeOptions)
    simclr: SimclrOptions = field(default_factory=SimclrOptions)
    moco: MocoOptions = field(default_factory=MocoOptions)
    mocov3: Mocov3Options = field(default_factory=Mocov3Options)
    byol: ByolOptions = field(default_factory=ByolOptions)
    swav: SwavOptions = field(default_factory=SwavOptions)

    def validate(self, origin: str, methods: tuple = ()) -> None:
        """Value checks; `methods` are the registered method names (the root passes them)."""
        if methods:
            check_choice(self.method, methods, origin, "train.method")
        check(self.resume in RESUME_MODES or "/" in self.resume, origin, "train.resume",
              "auto, never, or a checkpoint folder (RUN/checkpoints/step-N)", self.resume)
        check_choice(self.zero_stage, ZERO_STAGES, origin, "train.zero_stage")
        check_choice(self.precision, PRECISIONS, origin, "train.precision")
        check(self.max_steps >= 1, origin, "train.max_steps", "an int >= 1", self.max_steps)
        check(self.stop_at_step is None or self.stop_at_step >= 1, origin, "train.stop_at_step",
              "null or an int >= 1", self.stop_at_step)
        check(0 <= self.warmup_steps, origin, "train.warmup_steps", "an int >= 0", self.warmup_steps)
        check(self.blr > 0, origin, "train.blr", "a number > 0", self.blr)
        check(self.grad_accum >= 1, origin, "train.grad_accum", "an int >= 1", self.grad_accum)
        check(self.clip_grad >= 0, origin, "train.clip_grad", "a number >= 0", self.clip_grad)
        check(self.checkpoint_every >= 1, origin, "train.checkpoint_every", "an int >= 1", self.checkpoint_every)
        check(self.keep_last >= 1, origin, "train.keep_last", "an int >= 1", self.keep_last)
        check(self.log_every >= 1, origin, "train.log_every", "an int >= 1", self.log_every)
        check(self.patch_size >= 1, origin, "train.patch_size", "an int >= 1", self.patch_size)
        check(self.image_every >= 0, origin, "train.image_every", "an int >= 0", self.image_every)
        owned = sorted(set(self.deepspeed) & ENGINE_OWNED)
        check(not owned, origin, f"train.deepspeed.{owned[0] if owned else ''}",
              "a key the engine does not set itself (batch sizes come from loader.batch_size and train.grad_accum; "
              "the schedule from train.*)", owned)
        check(self.in_chans in (1, 3), origin, "train.in_chans", "1 or 3", self.in_chans)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), origin, "train.betas",
              "two numbers in [0, 1)", self.betas)
        check(0.0 < self.mae.mask_ratio < 1.0, origin, "train.mae.mask_ratio", "a number in (0, 1)",
              self.mae.mask_ratio)
        check(self.mae.decoder_dim % self.mae.decoder_heads == 0, origin, "train.mae.decoder_heads",
              "a divisor of train.mae.decoder_dim", self.mae.decoder_heads)
        check(0 <= self.momentum < 1, origin, "train.momentum", "a number in [0, 1)", self.momentum)
        for name in ("simclr", "moco", "mocov3", "swav"):
            value = getattr(self, name).temperature
            check(value > 0, origin, f"train.{name}.temperature", "a number > 0", value)
        for name in ("moco", "mocov3", "byol"):
            value = getattr(self, name).momentum
            check(0 <= value <= 1, origin, f"train.{name}.momentum", "a number in [0, 1]", value)
        check(self.moco.queue_size >= 1, origin, "train.moco.queue_size", "an int >= 1", self.moco.queue_size)
        swav = self.swav
        check(swav.prototypes >= 2, origin, "train.swav.prototypes", "an int >= 2", swav.prototypes)
        check(swav.sinkhorn_eps > 0, origin, "train.swav.sinkhorn_eps", "a number > 0", swav.sinkhorn_eps)
        check(swav.sinkhorn_iters >= 1, origin, "train.swav.sinkhorn_iters", "an int >= 1", swav.sinkhorn_iters)
        for key in ("small_crops", "freeze_prototypes_steps", "queue_size", "queue_start_step"):
            check(getattr(swav, key) >= 0, origin, f"train.swav.{key}", "an int >= 0", getattr(swav, key))
        for name in ("simclr", "moco", "mocov3", "byol", "swav"):
            for head in ("projector", "predictor"):
                if hasattr(getattr(self, name), head):
                    getattr(getattr(self, name), head).validate(origin, f"train.{name}.{head}")
