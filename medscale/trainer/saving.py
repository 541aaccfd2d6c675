"""What a checkpoint holds, saved and loaded: DeepSpeed's states (sharded under ZeRO), the loader's position,
every rank's RNG, the exported backbone and the method's picture (the layout is `core/runs.py`'s contract)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from medscale.core import runs as ck
from medscale.core.card import Card, save_backbone
from medscale.core.errors import StorageError
from medscale.core.faults import describe_write
from medscale.core.storage import absolute_url
from medscale.trainer.config import TrainConfig
from medscale.trainer.distributed import Dist, first_failure
from medscale.trainer.dsio import replay_cpu_adam_steps, weights_only_loads
from medscale.trainer.resume import SCHEDULE_KEYS, TrainingError, model_keys
from medscale.trainer.rng import load_rng, save_rng
from medscale.trainer.rundir import RunDir
from medscale.trainer.runlog import RunLog

logger = logging.getLogger(__name__)


def load_state(engine, method, loader, generator: torch.Generator, resume: Path, universal: Optional[Path],
               world: Dist, same_world: bool) -> None:
    """Every state a checkpoint holds: DeepSpeed's, the loader's position, this rank's RNG and method state. At the
    world size it was saved with, a missing RNG file makes the checkpoint damaged (it would not resume exactly)."""
    with weights_only_loads():  # a crafted file runs nothing: it fails to load, and the checkpoint counts as damaged
        path, _ = engine.load_checkpoint(str(universal or resume), tag=ck.DS_TAG)
    if path is None:
        raise TrainingError(f"DeepSpeed found no states in {universal or resume}")
    replay_cpu_adam_steps(engine.optimizer)
    loader.load_state_dict(ck.read_json(resume / ck.LOADER))
    rng = resume / f"rng-rank{world.rank}.pt"
    if rng.exists():
        method.load_rank_state(load_rng(rng, generator))
    elif same_world:
        raise TrainingError(f"{rng.name} is missing")
    else:  # a rank the checkpoint did not have: its own fresh stream
        logger.warning("%s has no RNG state for rank %d: seeding it afresh", resume, world.rank)


def export_backbone(method, cfg: TrainConfig, image_size: int, step: int, manifest_digest: str, directory: Path,
                    is_main: bool) -> None:
    """Write the backbone (gathered from ZeRO-3 shards on every rank; rank 0 writes) in the card contract."""
    import deepspeed

    backbone = method.backbone()
    params = list(backbone.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=cfg.zero_stage == 3):
        if is_main:
            from medscale.data.augment import IMAGENET_MEAN, IMAGENET_STD

            card = Card(cfg.model, image_size, list(IMAGENET_MEAN[:cfg.in_chans]), list(IMAGENET_STD[:cfg.in_chans]),
                        kwargs=method.backbone_kwargs(), in_chans=cfg.in_chans, step=step, method=cfg.method,
                        data=absolute_url(cfg.data), manifest_digest=manifest_digest)
            save_backbone(backbone, directory, card)


def save_checkpoint(engine, method, loader, generator: torch.Generator, cfg: TrainConfig, world: Dist,
                    run: RunDir, log: RunLog, step: int, inputs, image_size: int, digest: Tuple[str, int]) -> str:
    """Every rank writes its part; the run directory commits it (uploads, then the marker written last) and
    prunes old ones. A write that fails on any rank (a full disk) stops every rank before the commit, the rank that
    holds the cause saying why. Returns where the checkpoint is (a URL for a remote run directory)."""
    path = run.begin(step)
    if dist.is_initialized():
        dist.barrier()
    engine.save_checkpoint(str(path), tag=ck.DS_TAG)  # every rank reaches its barriers: failures are recorded
    failure = engine.checkpoint_engine.take_failure()
    try:
        save_rng(path / f"rng-rank{world.rank}.pt", generator, method.rank_state())
    except Exception as exc:
        failure = failure or describe_write(exc, path / f"rng-rank{world.rank}.pt")
    try:  # collective under ZeRO-3 (every rank gathers), written by rank 0
        export_backbone(method, cfg, image_size, step, digest[0], path / ck.EXPORT, world.is_main)
    except Exception as exc:
        failure = failure or describe_write(exc, path / ck.EXPORT)
    rows = picture(method, inputs, cfg.seed)
    if world.is_main:
        try:
            ck.write_json(path / ck.LOADER, loader.state_dict())
            ck.write_meta(path, {"step": step, "world_size": world.world_size, "method": cfg.method,
                                 "model": cfg.model, "data": cfg.data, "max_steps": cfg.max_steps,
                                 "batch_size": loader.batch_size, "grad_accum": cfg.grad_accum,
                                 "effective_batch": loader.batch_size * cfg.grad_accum * world.world_size,
                                 "manifest_digest": digest[0], "kept_samples": digest[1],
                                 "model_keys": model_keys(cfg, image_size),
                                 "schedule": {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                              for k, v in ((k, getattr(cfg, k)) for k in SCHEDULE_KEYS)},
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        except OSError as exc:
            failure = failure or describe_write(exc, path / ck.META)
    rank, cause = first_failure(failure)  # also the barrier before the commit
    if cause:
        raise StorageError(f"writing checkpoint {run.where(path)} failed on rank {rank}: {cause}. The last complete "
                           "checkpoint is kept: fix the cause and rerun the same command to resume from it"
                           ).held_by(rank)
    run.commit(path, step)
    if world.is_main:
        latest = run.local / ck.EXPORT
        tmp = latest.with_name(".export.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path / ck.EXPORT, tmp)
        shutil.rmtree(latest, ignore_errors=True)
        tmp.rename(latest)
        if rows is not None:
            log.picture(step, rows, method.picture_tag, method.picture_rows)
        log.event("checkpoint", step=step, path=run.where(path))
    run.prune(cfg.keep_last)
    run.sync()
    return run.where(path)


def picture(method, inputs, seed: int) -> Optional[List[torch.Tensor]]:
    """The method's picture of a few samples as rows of images (MAE: original / masked / reconstruction; contrastive
    methods: their views), with its own generator so that logging draws nothing from the training streams."""
    if not hasattr(method, "picture"):
        return None
    few = inputs[:8] if torch.is_tensor(inputs) else [view[:8] for view in inputs]
    generator = torch.Generator(device=few.device if isinstance(few, torch.Tensor) else few[0].device)
    generator.manual_seed(seed + 12345)
    was_training = method.training
    method.eval()
    try:
        return [row.float().cpu() for row in method.picture(few, generator)]
    finally:
        method.train(was_training)
