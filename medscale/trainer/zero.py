"""DeepSpeed ZeRO set-up: the precision `auto` means, the optimizer (DeepSpeed's fused AdamW, or timm's factory for
any other name), the DeepSpeed config generated from `train.*`, and the engine (with fp32 ZeRO-1/2 keeping no second
copy of its weights partition)."""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from medscale.core.errors import ConfigError
from medscale.trainer.config import TrainConfig

# DeepSpeed versions the shared fp32 master was tested with (it reaches into ZeRO's optimizer attributes): [from, to)
SHARED_MASTER_TESTED = ((0, 19), (0, 20))
# timm optimizers whose update reads each tensor whole (a per-layer trust ratio, factored or orthogonalised moments):
# ZeRO-1/2/3 hand the optimizer flat partitions of many tensors, which would silently change what they compute
PER_TENSOR = ("lars", "lamb", "adafactor", "adafactor_bv", "muon", "kron", "adahessian")
logger = logging.getLogger(__name__)


def precision_of(cfg: TrainConfig, device: torch.device) -> str:
    """The precision `auto` means here: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def client_optimizer(cfg: TrainConfig, groups: list, lr: float) -> Optional[torch.optim.Optimizer]:
    """None for `adamw` (DeepSpeed builds its fused AdamW from the config); any other `train.optimizer` is built by
    timm's optimizer factory (`lars`, `lamb`, `sgd`, `momentum`...), or a ConfigError naming the key."""
    if cfg.optimizer == "adamw":
        return None
    import timm.optim

    try:
        info = timm.optim.get_optimizer_info(cfg.optimizer.split("_")[-1])
    except ValueError:
        raise ConfigError(f"train.optimizer: timm has no optimizer {cfg.optimizer!r}; use adamw (DeepSpeed's fused "
                          f"AdamW) or one of timm.optim.list_optimizers(), e.g. lars, lamb, sgd, momentum") from None
    if info.opt_class.__module__.rsplit(".", 1)[-1] in PER_TENSOR and cfg.zero_stage > 0:
        raise ConfigError(f"train.optimizer {cfg.optimizer} adapts each tensor as a whole, and ZeRO stage "
                          f"{cfg.zero_stage} hands the optimizer flat partitions of many: use train.zero_stage=0 "
                          "(plain data parallel), or an elementwise optimizer (adamw, sgd, momentum)")
    try:
        return timm.optim.create_optimizer_v2(groups, opt=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay,
                                              momentum=cfg.momentum, betas=tuple(cfg.betas))
    except (ImportError, RuntimeError) as exc:  # apex / bitsandbytes optimizers without their package or a GPU
        raise ConfigError(f"train.optimizer {cfg.optimizer}: {str(exc).splitlines()[0]}") from exc


def deepspeed_config(cfg: TrainConfig, batch_size: int, world_size: int, precision: str, lr: float,
                     n_params: int = 0, client: bool = False, autocast: bool = False) -> Dict[str, Any]:
    """The DeepSpeed config, generated from `train.*` (and `train.deepspeed`, merged last). Communication buckets
    are no larger than the model (`n_params`): DeepSpeed's defaults (5e8 elements) suit billion-parameter models,
    and ZeRO-3 allocates its bucket up front (2 GiB per rank for a 5M-parameter ViT-Tiny). `client`: the optimizer
    comes from `client_optimizer`; `autocast`: bf16/fp16 run as torch autocast over fp32 weights instead of
    DeepSpeed's reduced-precision weights."""
    bucket = int(min(5e8, max(1e5, n_params // 8))) if n_params else int(5e8)  # ~8 buckets a step
    ds: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": batch_size * cfg.grad_accum * world_size,
        "zero_optimization": {"stage": cfg.zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket,
                              "stage3_prefetch_bucket_size": min(bucket, int(5e7))},
        # DeepSpeed's fused Adam (compiled once, ~35 s, then cached): one pass over ZeRO's flat fp32 partitions,
        # where torch's AdamW makes several (+4-15% per step on CPU; `optimizer.params.torch_adam: true` skips it)
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": list(cfg.betas), "eps": 1e-8,
                                                  "weight_decay": cfg.weight_decay, "torch_adam": False}},
        "bf16": {"enabled": precision == "bf16" and not autocast},
        "fp16": {"enabled": precision == "fp16" and not autocast, "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if autocast and precision in ("bf16", "fp16"):
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if precision == "bf16" else "float16"}
    if client:
        del ds["optimizer"]
        ds["zero_allow_untested_optimizer"] = True  # timm's optimizers are elementwise here (PER_TENSOR refused)
    if cfg.clip_grad:
        ds["gradient_clipping"] = cfg.clip_grad
    return _merge(ds, cfg.deepspeed)


def _pairs(optimizer):
    """(master partition, the model's partition) per group of a ZeRO optimizer, or nothing."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if isinstance(optimizer, DeepSpeedZeroOptimizer) and not optimizer.cpu_offload:
        for i, master in enumerate(optimizer.single_partition_of_fp32_groups):
            rank = dist.get_rank(group=optimizer.real_dp_process_group[i])
            yield master, optimizer.parallel_partitioned_bit16_groups[i][rank]
    elif isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3) and not optimizer.offload_optimizer \
            and not optimizer.params_in_nvme_and_cpu:
        yield from zip(optimizer.fp32_partitioned_groups_flat, optimizer.fp16_partitioned_groups_flat)


def shared_master_tested(version: str) -> bool:
    """True when DeepSpeed `version` ("0.19.8") is one `share_fp32_master` was tested with."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return SHARED_MASTER_TESTED[0] <= major_minor < SHARED_MASTER_TESTED[1]


def share_fp32_master(optimizer, deepspeed_version: Optional[str] = None) -> int:
    """In fp32, make ZeRO's master weights partition the model's own flat partition instead of a copy; returns the
    bytes freed.

    DeepSpeed's ZeRO-1/2 clone each rank's partition as fp32 "master weights" whatever the model's dtype (ZeRO-3
    means to share it when the dtypes match, but compares a `torch.device` with a string, so it clones too); when
    the model is fp32 the clone holds the same numbers, costs a third of this rank's optimizer memory (master + 2
    Adam moments) and a copy back into the model after every step. Sharing the storage keeps every DeepSpeed path
    as it is: the copy back becomes a copy onto itself, checkpoints save the same values, and loading one writes
    into the model. On a DeepSpeed version it was not tested with, DeepSpeed's own copy stays (one log line).

    `deepspeed_version`: the version to check (default: the one installed)."""
    if deepspeed_version is None:
        import deepspeed

        deepspeed_version = deepspeed.__version__
    if not shared_master_tested(deepspeed_version):
        low, high = (".".join(map(str, v)) for v in SHARED_MASTER_TESTED)
        logger.info("fp32 ZeRO: DeepSpeed %s is not a version the shared master weights were tested with (%s to "
                    "before %s): keeping DeepSpeed's own copy", deepspeed_version, low, high)
        return 0
    freed = 0
    for master, part in _pairs(optimizer):
        if part.dtype == master.dtype == torch.float32 and part.shape == master.shape and \
                part.data_ptr() != master.data_ptr():
            freed += master.untyped_storage().nbytes()
            master.data = part.data
    if freed:
        optimizer._link_all_hp_params()  # ZeRO-1/2: the fragments universal checkpoints load into are views
    return freed


def cpu_info_once() -> None:
    """Make py-cpuinfo answer from memory after its first answer in this process."""
    import cpuinfo

    # DeepSpeed's op builders ask it for the CPU's architecture and SIMD width each time an op is loaded, and each
    # answer starts a fresh Python process to read CPUID (about 1 s): a start-up cost paid twice by every rank
    if not hasattr(cpuinfo.get_cpu_info, "cache_info"):
        cpuinfo.get_cpu_info = functools.lru_cache(maxsize=1)(cpuinfo.get_cpu_info)


def initialize(method: torch.nn.Module, cfg: TrainConfig, batch_size: int, world_size: int, precision: str,
               lr: float, extra: Optional[Dict[str, Any]] = None):
    """`deepspeed.initialize` of `method` with its optimizer and the generated config (and `extra` keys merged last);
    the engine."""
    import deepspeed

    from medscale.trainer.distributed import announce_build
    from medscale.trainer.dsio import install

    if cfg.zero_stage == 3 and method.no_zero3:
        raise ConfigError(f"train.zero_stage 3: {cfg.method} {method.no_zero3}; use train.zero_stage=2")
    groups = method.parameter_groups(cfg.weight_decay)
    optimizer = client_optimizer(cfg, groups, lr)
    ds_config = deepspeed_config(cfg, batch_size, world_size, precision, lr,
                                 sum(p.numel() for p in method.parameters()), client=optimizer is not None,
                                 autocast=method.fp32_weights)
    if optimizer is None and not ds_config["optimizer"]["params"]["torch_adam"]:
        cpu_info_once()
        announce_build("fused_adam", "fused Adam")
    engine, _, _, _ = deepspeed.initialize(model=method, model_parameters=None if optimizer else groups,
                                           optimizer=optimizer, config=_merge(ds_config, extra or {}))
    install(engine)  # loads that run no code; save failures that every rank learns of
    freed = share_fp32_master(engine.optimizer)
    if freed:
        logger.info("fp32 ZeRO: master weights share the model's partition (%.1f MiB per rank saved)", freed / 2**20)
    return engine
