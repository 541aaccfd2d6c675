"""The pre-training engine: DeepSpeed ZeRO around a registered method, fed by `medscale.data.create_loader`;
checkpoints with the loader position and every rank's RNG (exact resume), auto-resume, preemption, export.

    summary = pretrain(cfg.train, cfg.loader)     # under torchrun / the deepspeed launcher / one process
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from medscale.core.card import save_backbone
from medscale.core.config import to_yaml
from medscale.core.errors import ConfigError, MedscaleError
from medscale.core.storage import filesystem
from medscale.core.summary import Summary
from medscale.data.augment import normalize_batch
from medscale.data.config import LoaderConfig
from medscale.data.manifest import kept_digest
from medscale.trainer import checkpoint as ck
from medscale.trainer.config import TrainConfig
from medscale.trainer.distributed import Dist, PreemptionFlag, all_reduce_step, init_distributed
from medscale.trainer.registry import create_method
from medscale.trainer.resume import (
    SCHEDULE_KEYS,
    TrainingError,
    check_resume,
    keep_global_batch,
    model_keys,
    to_universal,
)
from medscale.trainer.runlog import RunLog
from medscale.trainer.schedule import learning_rate, scaled_lr

logger = logging.getLogger(__name__)


class Preempted(MedscaleError):
    """A preemption signal stopped the run after a save; exit with `checkpoint.PREEMPTED_EXIT`."""


@dataclass
class PretrainSummary(Summary):
    """What a pre-training run did."""

    run_dir: str
    method: str
    model: str
    start_step: int = 0
    step: int = 0
    max_steps: int = 0
    world_size: int = 1
    loss: float = float("nan")
    images_per_s: float = 0.0
    seconds: float = 0.0
    checkpoint: Optional[str] = None
    stopped: str = "done"  # done | stop_at_step | preempted

    def format(self) -> str:
        """A few human lines."""
        return (f"medscale pretrain {self.method} {self.model} -> {self.run_dir}\n"
                f"  steps {self.start_step} -> {self.step} of {self.max_steps} on {self.world_size} rank(s) "
                f"({self.stopped}), loss {self.loss:.4f}, {self.images_per_s:.1f} images/s, {self.seconds:.0f} s\n"
                f"  checkpoint: {self.checkpoint}")


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


def deepspeed_config(cfg: TrainConfig, batch_size: int, world_size: int, precision: str, lr: float,
                     n_params: int = 0) -> Dict[str, Any]:
    """The DeepSpeed config, generated from `train.*` (and `train.deepspeed`, merged last). Communication buckets
    are no larger than the model (`n_params`): DeepSpeed's defaults (5e8 elements) suit billion-parameter models,
    and ZeRO-3 allocates its bucket up front (2 GiB per rank for a 5M-parameter ViT-Tiny)."""
    bucket = int(min(5e8, max(1e6, n_params // 8))) if n_params else int(5e8)  # ~8 buckets a step
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
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if cfg.clip_grad:
        ds["gradient_clipping"] = cfg.clip_grad
    return _merge(ds, cfg.deepspeed)


def pretrain(cfg: TrainConfig, loader_cfg: LoaderConfig) -> PretrainSummary:
    """Pre-train `cfg.method` on `cfg.data` into `cfg.run_dir`, resuming from its newest complete checkpoint."""
    import deepspeed

    from medscale.data.loaders import create_loader

    if not cfg.data:
        raise ConfigError("train.data is not set: pass the corpus (a `medscale shard` output), train.data=PATH")
    if not cfg.run_dir:
        raise ConfigError("train.run_dir is not set: where checkpoints and logs go, train.run_dir=PATH")
    if "://" in cfg.run_dir and not cfg.run_dir.startswith("file://"):
        raise ConfigError(f"train.run_dir {cfg.run_dir!r}: only local run directories are supported so far")
    world = init_distributed()
    run_dir = Path(cfg.run_dir)
    torch.manual_seed(cfg.seed + world.rank)
    method = create_method(cfg.method, cfg, loader_cfg.image_size)
    loader_cfg = copy.copy(loader_cfg)
    loader_cfg.augment = method.augment  # what the method needs (issue 14 lets the config override it)
    if loader_cfg.batch_dtype == "auto":  # on a GPU, batches cross process boundaries as uint8 and are normalised
        # there; on CPU the normalisation costs this process what it saves the workers, so they do it
        loader_cfg.batch_dtype = "uint8" if world.device.type == "cuda" else "float32"
    loader = create_loader(cfg.data, loader_cfg, rank=world.rank, world_size=world.world_size)

    resume = ck.latest_checkpoint(run_dir)
    meta = ck.read_json(resume / ck.META) if resume is not None else {}
    fs, root = filesystem(cfg.data, loader_cfg.storage_options)
    digest = kept_digest(fs, root)
    universal, note = None, None
    if resume is not None:
        check_resume(meta, cfg, loader_cfg.image_size, digest, resume)
        if meta.get("world_size") != world.world_size:  # spot nodes came or went: DeepSpeed's universal format
            universal = to_universal(resume, world) if cfg.zero_stage > 0 else None  # stage 0 is not partitioned
            accum, note = keep_global_batch(int(meta["effective_batch"]), loader_cfg.batch_size, world.world_size,
                                            cfg.grad_accum)
            cfg = dataclasses.replace(cfg, grad_accum=accum)
            logger.warning("resuming %d ranks' checkpoint on %d ranks: %s", meta["world_size"], world.world_size,
                           note)
    effective = loader_cfg.batch_size * cfg.grad_accum * world.world_size
    base_lr = scaled_lr(cfg.blr, effective)
    precision = precision_of(cfg, world.device)
    ds_config = deepspeed_config(cfg, loader_cfg.batch_size, world.world_size, precision, base_lr,
                                 sum(p.numel() for p in method.parameters()))
    if universal is not None:
        ds_config = _merge(ds_config, {"checkpoint": {"load_universal": True}})
    engine, _, _, _ = deepspeed.initialize(
        model=method, model_parameters=method.parameter_groups(cfg.weight_decay), config=ds_config)
    generator = torch.Generator(device=world.device)
    generator.manual_seed(cfg.seed * 1_000_003 + world.rank)

    start_step = 0
    while resume is not None:
        try:
            _load_state(engine, loader, generator, resume, universal, world)
            failed = ""
        except Exception as exc:  # a damaged file in a checkpoint marked complete (disk error, manual edits)
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if not all_reduce_step([float(bool(failed))], world.device)[0]:  # every rank loaded it
            start_step = int(meta["step"])
            break
        previous = [p for p in ck.complete_checkpoints(run_dir) if p < resume
                    and ck.read_json(p / ck.META).get("world_size") == meta.get("world_size")]
        if universal is not None or not previous:
            raise TrainingError(f"{resume} is damaged ({failed or 'on another rank'}) and no earlier checkpoint of "
                                f"this world size can stand in; remove {resume} and rerun")
        logger.warning("skipping damaged checkpoint %s (%s): resuming from %s", resume, failed or "on another rank",
                       previous[-1])
        resume = previous[-1]
        meta = ck.read_json(resume / ck.META)
    log = RunLog(run_dir, world.is_main, cfg.progress, start_step, cfg.max_steps)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ck.CONFIG).write_text(to_yaml({"train": cfg, "loader": loader_cfg}))
        log.event("start" if resume is None else "resume", step=start_step, world_size=world.world_size,
                  precision=precision, lr=base_lr, effective_batch=effective, grad_accum=cfg.grad_accum,
                  checkpoint=str(resume) if resume else None, world_size_change=note)
    summary = PretrainSummary(str(run_dir), cfg.method, cfg.model, start_step, start_step, cfg.max_steps,
                              world.world_size)
    flag = PreemptionFlag().install()
    try:
        _loop(engine, method, loader, generator, cfg, world, log, flag, base_lr, summary, digest)
    finally:
        flag.restore()
        log.close()
    return summary


def _load_state(engine, loader, generator, resume: Path, universal: Optional[Path], world: Dist) -> None:
    """Every state a checkpoint holds: DeepSpeed's, the loader's position, this rank's RNG."""
    path, _ = engine.load_checkpoint(str(universal or resume), tag=ck.DS_TAG)
    if path is None:
        raise TrainingError(f"DeepSpeed found no states in {universal or resume}")
    loader.load_state_dict(ck.read_json(resume / ck.LOADER))
    rng = resume / f"rng-rank{world.rank}.pt"
    if rng.exists():
        ck.load_rng(rng, generator)
    else:  # a rank the checkpoint did not have: its own fresh stream
        logger.warning("%s has no RNG state for rank %d: seeding it afresh", resume, world.rank)


def _batches(loader):
    """Batches forever, epoch after epoch (the loader moves to the next epoch by itself)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise TrainingError("the loader gave no batch: the corpus has fewer samples than one batch per rank")


def _loop(engine, method, loader, generator, cfg: TrainConfig, world: Dist, log: RunLog, flag: PreemptionFlag,
          base_lr: float, summary: PretrainSummary, digest: Tuple[str, int]) -> None:
    batches = _batches(loader)
    input_dtype = next(p for p in method.parameters()).dtype  # bf16/fp16 engines cast the model, not its inputs
    last = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    step, start = summary.start_step, time.perf_counter()
    images_seen, wait_s, window_start = 0, 0.0, time.perf_counter()
    images = None
    while step < last:
        lr = learning_rate(step, base_lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        losses = []
        for _ in range(cfg.grad_accum):
            t = time.perf_counter()
            batch = next(batches)
            wait_s += time.perf_counter() - t
            images = normalize_batch(batch["image"].to(world.device, non_blocking=True)).to(input_dtype)
            loss, _ = engine(images, generator)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            images_seen += images.shape[0]
        step += 1
        local = sum(losses) / len(losses)
        total, signalled, bad = all_reduce_step([local, float(flag.signalled), float(local != local or
                                                                                      abs(local) == float("inf"))],
                                                world.device)
        mean_loss = total / world.world_size
        if bad:
            previous = ck.latest_checkpoint(cfg.run_dir)
            log.event("non_finite_loss", step=step)
            raise TrainingError(f"the loss became non-finite at step {step}; the last good checkpoint is kept "
                                f"({previous or 'none yet'}): lower train.blr, raise train.warmup_steps or check "
                                "the data, then rerun to resume from it")
        summary.step, summary.loss = step, mean_loss
        log.progress(step, mean_loss)
        if step % cfg.log_every == 0 or step == last:
            elapsed = time.perf_counter() - window_start
            rate = images_seen * world.world_size / elapsed if elapsed else 0.0
            log.scalars(step, {"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": rate,
                               "train/data_wait_fraction": wait_s / elapsed if elapsed else 0.0,
                               "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
                               "train/memory_gib": _memory_gib(world.device)})
            images_seen, wait_s, window_start = 0, 0.0, time.perf_counter()
        if cfg.image_every and step % cfg.image_every == 0 and step % cfg.checkpoint_every:
            picture = _picture(method, images, cfg.seed)  # every rank: ZeRO-3 gathers weights in the forward
            if world.is_main and picture is not None:
                log.picture(step, picture)
        stopping = signalled > 0 or step == last
        if step % cfg.checkpoint_every == 0 or stopping:
            summary.checkpoint = str(save_checkpoint(engine, method, loader, generator, cfg, world, log, step,
                                                     images, digest))
        if signalled > 0:
            if world.is_main:
                ck.write_json(Path(cfg.run_dir) / ck.PREEMPTED, {
                    "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": summary.checkpoint,
                    "signal": flag.signal_name or "on another rank", "exit_code": ck.PREEMPTED_EXIT})
            log.event("preempted", step=step, checkpoint=summary.checkpoint)
            summary.stopped = "preempted"
            break
    seconds = time.perf_counter() - start
    summary.seconds = seconds
    done = summary.step - summary.start_step
    summary.images_per_s = done * cfg.grad_accum * loader.batch_size * world.world_size / seconds if seconds else 0.0
    if summary.stopped != "preempted":
        summary.stopped = "done" if summary.step >= cfg.max_steps else "stop_at_step"
        log.event(summary.stopped, step=summary.step, loss=summary.loss)
    if summary.stopped == "preempted":
        raise Preempted(f"preempted at step {summary.step}: saved {summary.checkpoint}; rerun the same command to "
                        f"resume (exit code {ck.PREEMPTED_EXIT})")


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def export_backbone(method, cfg: TrainConfig, image_size: int, step: int, manifest_digest: str, directory: Path,
                    is_main: bool) -> None:
    """Write the backbone (gathered from ZeRO-3 shards on every rank; rank 0 writes) in the card contract."""
    import deepspeed

    backbone = method.backbone()
    params = list(backbone.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=cfg.zero_stage == 3):
        if is_main:
            from medscale.data.augment import IMAGENET_MEAN, IMAGENET_STD

            card = {"model": cfg.model, "kwargs": method.backbone_kwargs(), "image_size": image_size,
                    "in_chans": cfg.in_chans, "mean": list(IMAGENET_MEAN[:cfg.in_chans]),
                    "std": list(IMAGENET_STD[:cfg.in_chans]), "step": step, "method": cfg.method,
                    "data": cfg.data, "manifest_digest": manifest_digest}
            save_backbone(backbone, directory, card)


def save_checkpoint(engine, method, loader, generator, cfg: TrainConfig, world: Dist, log: RunLog, step: int,
                    images: torch.Tensor, digest: Tuple[str, int]) -> Path:
    """Every rank writes its part, then rank 0 marks the checkpoint complete and prunes old ones."""
    path = ck.checkpoint_dir(cfg.run_dir, step)
    if world.is_main and path.exists() and not (path / ck.COMPLETE).exists():
        shutil.rmtree(path)  # a save of this step that was interrupted: nothing of it may be mixed in
    if dist.is_initialized():
        dist.barrier()
    engine.save_checkpoint(str(path), tag=ck.DS_TAG)
    ck.save_rng(path / f"rng-rank{world.rank}.pt", generator)
    image_size = int(images.shape[-1])
    export_backbone(method, cfg, image_size, step, digest[0], path / ck.EXPORT, world.is_main)
    picture = _picture(method, images, cfg.seed)
    if world.is_main:
        ck.write_json(path / ck.LOADER, loader.state_dict())
        ck.write_json(path / ck.META, {"step": step, "world_size": world.world_size, "method": cfg.method,
                                       "model": cfg.model, "data": cfg.data, "max_steps": cfg.max_steps,
                                       "batch_size": loader.batch_size, "grad_accum": cfg.grad_accum,
                                       "effective_batch": loader.batch_size * cfg.grad_accum * world.world_size,
                                       "manifest_digest": digest[0], "kept_samples": digest[1],
                                       "model_keys": model_keys(cfg, image_size),
                                       "schedule": {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                                    for k, v in ((k, getattr(cfg, k)) for k in SCHEDULE_KEYS)},
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if dist.is_initialized():
        dist.barrier()
    if world.is_main:
        ck.mark_complete(path, step)
        latest = Path(cfg.run_dir) / ck.EXPORT
        tmp = latest.with_name(".export.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path / ck.EXPORT, tmp)
        shutil.rmtree(latest, ignore_errors=True)
        tmp.rename(latest)
        ck.prune(cfg.run_dir, cfg.keep_last)
        if picture is not None:
            log.picture(step, picture)
        log.event("checkpoint", step=step, path=str(path))
    return path


def _picture(method, images: torch.Tensor, seed: int) -> Optional[torch.Tensor]:
    """The method's picture of a few images (MAE: original / masked / reconstruction), with its own generator so
    that logging draws nothing from the training streams."""
    if not hasattr(method, "picture"):
        return None
    generator = torch.Generator(device=images.device)
    generator.manual_seed(seed + 12345)
    was_training = method.training
    method.eval()
    try:
        return method.picture(images[:8], generator).float().cpu()
    finally:
        method.train(was_training)

