"""The trainer's config section (`train.*`): the run, the schedule and the engine. Each method's own options are
its section (`train.mae`), added from the method registry (`medscale.trainer.registry.train_config_class`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from medscale.core.config import check, check_choice, validate_sections

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
ENGINE_OWNED = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "scheduler"}
ZERO_STAGES = (0, 1, 2, 3)
RESUME_MODES = ("auto", "never")  # or a checkpoint folder


@dataclass(frozen=True)
class ModelSpec:
    """What a method builds its timm backbone from (`train.model`, `train.in_chans`, `train.patch_size`) and the
    seed of its own random state (a queue's start)."""

    model: str
    in_chans: int
    patch_size: int
    seed: int


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
    patch_size: int = 16  # ViT patch size (ignored by convolutional networks)
    in_chans: int = 3  # 1 (grey, as stored) or 3 (grey repeated)
    max_steps: int = 1000  # the schedule's length (optimizer steps)
    stop_at_step: Optional[int] = None  # stop, save and exit 0 after this step; the schedule is unchanged
    warmup_steps: int = 40  # linear warmup from 0, then a half-cycle cosine to min_lr
    blr: float = 1.5e-4  # lr = blr x effective batch / 256 (MAE's rule)
    min_lr: float = 0.0  # the cosine schedule's floor
    weight_decay: float = 0.05  # not on biases, norms, position embeddings or cls/mask tokens
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])  # Adam-type optimizers
    optimizer: str = "adamw"  # adamw (DeepSpeed's fused AdamW) | any timm optimizer name: lars, lamb, sgd, momentum...
    momentum: float = 0.9  # SGD-type optimizers (sgd, momentum, lars)
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad: float = 0.0  # 0: no clipping
    zero_stage: int = 2  # DeepSpeed ZeRO stage: 0 (DDP-like) | 1 | 2 | 3
    precision: str = "auto"  # auto: bf16 on GPUs that have it, fp32 on CPU | fp32 | fp16 (loss scaling) | bf16
    seed: int = 0  # weights, masks and the rank generators
    checkpoint_every: int = 100  # steps between checkpoints (and exports)
    keep_last: int = 3  # complete checkpoints kept; older ones are removed
    log_every: int = 10  # steps between TensorBoard scalars
    image_every: int = 0  # steps between reconstruction grids besides those at checkpoints (0: checkpoints only)
    progress: bool = True  # a progress bar on rank 0
    deepspeed: Dict[str, Any] = field(default_factory=dict)  # extra DeepSpeed config keys, merged last

    def method_options(self) -> Any:
        """The options of `train.method` (its section), or None for a method without options."""
        return getattr(self, self.method, None)

    def model_spec(self) -> ModelSpec:
        """What the method builds its backbone from."""
        return ModelSpec(self.model, self.in_chans, self.patch_size, self.seed)

    def validate(self, origin: str, methods: tuple = ()) -> None:
        """Value checks, each method's section's own among them; `methods`: the registered names."""
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
        check(0 <= self.momentum < 1, origin, "train.momentum", "a number in [0, 1)", self.momentum)
        validate_sections(self, methods, origin, "train")
