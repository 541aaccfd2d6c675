"""The pre-training engine: DeepSpeed ZeRO around a registered method, fed by `medscale.data.create_loader`;
checkpoints with the loader position and every rank's RNG (exact resume), auto-resume, preemption, export.

    summary = pretrain(cfg.train, cfg.loader)     # under torchrun / the deepspeed launcher / one process
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from medscale.core import runs as ck
from medscale.core.config import to_yaml
from medscale.core.errors import ConfigError, MedscaleError, StorageError
from medscale.core.faults import fault_kind
from medscale.core.storage import filesystem
from medscale.core.summary import Summary
from medscale.data.augment import normalize_batch
from medscale.data.config import LoaderConfig
from medscale.data.manifest import check_corpus
from medscale.trainer.config import RESUME_MODES, TrainConfig
from medscale.trainer.distributed import (
    Dist,
    all_reduce_step,
    batch_norm_across_ranks,
    first_failure,
    init_distributed,
)
from medscale.trainer.preemption import PreemptionFlag
from medscale.trainer.registry import create_method, method_class
from medscale.trainer.resume import (
    TrainingError,
    check_resume,
    keep_global_batch,
    to_universal,
)
from medscale.trainer.rundir import RunDir
from medscale.trainer.runlog import RunLog
from medscale.trainer.saving import load_state, picture, save_checkpoint
from medscale.trainer.schedule import learning_rate, scaled_lr
from medscale.trainer.zero import initialize, precision_of

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


def check_run_config(cfg: TrainConfig, loader_cfg: LoaderConfig) -> Tuple[str, str]:
    """What the trainer rejects in a valid config, before anything starts (a launcher's preflight asks too): the
    corpus and the run directory set, a loader that gives the method the input it trains on. Returns (corpus,
    run directory)."""
    if not cfg.data:
        raise ConfigError("train.data is not set: pass the corpus (a `medscale shard` output), train.data=PATH")
    if not cfg.run_dir:
        raise ConfigError("train.run_dir is not set: where checkpoints and logs go, train.run_dir=PATH")
    wanted = method_class(cfg.method).augment
    if loader_cfg.augment is not None and (loader_cfg.augment == "contrastive") != (wanted == "contrastive"):
        raise ConfigError(f"loader.augment {loader_cfg.augment} does not give {cfg.method} the input it trains on "
                          f"(views of `contrastive`, one image otherwise): leave loader.augment unset, or set it to "
                          f"{wanted}")
    if loader_cfg.channels is not None and loader_cfg.channels != cfg.in_chans:
        raise ConfigError(f"loader.channels {loader_cfg.channels} differs from train.in_chans {cfg.in_chans}: leave "
                          "loader.channels unset")
    return cfg.data, cfg.run_dir


def pretrain(cfg: TrainConfig, loader_cfg: LoaderConfig, force: bool = False,
             flag: Optional[PreemptionFlag] = None) -> PretrainSummary:
    """Pre-train `cfg.method` on `cfg.data` into `cfg.run_dir`, resuming from its newest complete checkpoint; the
    run directory's lease keeps to one trainer (`force`: break a live one). `flag`: the preemption flag the caller
    installed at its start (a signal during start-up then stops the run after its first step), else one now."""

    from medscale.data.loaders import create_loader

    flag = flag or PreemptionFlag().install()
    try:
        return _leased(cfg, loader_cfg, force, flag, create_loader)
    finally:
        flag.restore()


def _leased(cfg: TrainConfig, loader_cfg: LoaderConfig, force: bool, flag: PreemptionFlag,
            create_loader) -> PretrainSummary:
    data, run_dir = check_run_config(cfg, loader_cfg)
    fs, root = filesystem(data, loader_cfg.storage_options)
    check_corpus(fs, root, data)  # a missing corpus is one line before anything starts
    world = init_distributed()
    run = RunDir(run_dir, cfg.storage_options, cfg.local_dir, world)
    run.take_lease(force)
    failure: Optional[BaseException] = None
    try:
        return _pretrain(cfg, loader_cfg, world, run, flag, create_loader)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if failure is None or not storage_failed(failure):  # a failed store is not asked again: the lease goes
            run.release_lease()  # stale by itself


def _pretrain(cfg: TrainConfig, loader_cfg: LoaderConfig, world: Dist, run: RunDir, flag: PreemptionFlag,
              create_loader) -> PretrainSummary:
    torch.manual_seed(cfg.seed + world.rank)
    method = create_method(cfg.method, cfg, loader_cfg.image_size)
    loader_cfg = loader_cfg.for_model(method.augment, method.small_crops, cfg.in_chans)  # unless the config says
    batch_norm = batch_norm_across_ranks(method, world)
    if batch_norm and world.is_main:
        logger.info("%s", batch_norm)
    if loader_cfg.batch_dtype == "auto":  # on a GPU, batches cross process boundaries as uint8 and are normalised
        # there; on CPU the normalisation costs this process what it saves the workers, so they do it
        loader_cfg.batch_dtype = "uint8" if world.device.type == "cuda" else "float32"
    loader = create_loader(cfg.data, loader_cfg, rank=world.rank, world_size=world.world_size)
    digest = loader.corpus_digest  # what it reads (an empty corpus: one line before DeepSpeed starts)

    steps = run.complete_steps()
    if cfg.resume not in RESUME_MODES and dist.is_initialized():
        dist.barrier()  # every rank has listed the run before one adopts a checkpoint into it
    if steps and cfg.resume == "never":
        raise ConfigError(f"train.resume=never: {run.url} holds checkpoints (the newest at step {steps[-1]}); use "
                          "another train.run_dir, or train.resume=auto to continue that run")
    resume = run.fetch(steps[-1]) if steps else None
    if resume is None and cfg.resume not in RESUME_MODES:  # a fresh run started from another run's checkpoint
        resume = run.adopt(Path(cfg.resume))
    meta = ck.read_meta(resume) if resume is not None else {}
    universal, note = None, None
    if resume is not None:
        check_resume(meta, cfg, loader_cfg.image_size, digest, resume)
        if meta.get("world_size") != world.world_size:  # spot nodes came or went: DeepSpeed's universal format
            # stage 0 is not partitioned: its states load on any world size as they are
            universal = to_universal(resume, world, run.writer) if cfg.zero_stage > 0 else None
            accum, note = keep_global_batch(int(meta["effective_batch"]), loader_cfg.batch_size, world.world_size,
                                            cfg.grad_accum)
            cfg = dataclasses.replace(cfg, grad_accum=accum)
            logger.warning("resuming %d ranks' checkpoint on %d ranks: %s", meta["world_size"], world.world_size,
                           note)
    effective = loader_cfg.batch_size * cfg.grad_accum * world.world_size
    base_lr = scaled_lr(cfg.blr, effective)
    precision = precision_of(cfg, world.device)
    engine = initialize(method, cfg, loader_cfg.batch_size, world.world_size, precision, base_lr,
                        {"checkpoint": {"load_universal": True}} if universal is not None else None)
    generator = torch.Generator(device=world.device)
    generator.manual_seed(cfg.seed * 1_000_003 + world.rank)

    start_step = 0
    while resume is not None:
        try:
            load_state(engine, method, loader, generator, resume, universal, world,
                       same_world=meta.get("world_size") == world.world_size)
            failed = ""
        except Exception as exc:  # a damaged file in a checkpoint marked complete (disk error, manual edits)
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        rank, failed = first_failure(failed)
        if rank < 0:  # every rank loaded it
            start_step = int(meta["step"])
            break
        failed = f"{failed}, on rank {rank}" if world.world_size > 1 else failed
        damaged = run.where(resume)
        run.forget(resume)  # a local copy that failed to load is downloaded again next time
        previous = [s for s in steps if s < ck.step_of(resume)
                    and run.meta(s).get("world_size") == meta.get("world_size")]
        if universal is not None or not previous:
            raise TrainingError(f"{damaged} is damaged ({failed}) and no earlier checkpoint of this world size can "
                                f"stand in; remove {damaged} and rerun").held_by(max(rank, 0))
        resume = run.fetch(previous[-1])
        logger.warning("skipping damaged checkpoint %s (%s): resuming from %s", damaged, failed, run.where(resume))
        meta = ck.read_meta(resume)
    run.pull()  # a fresh node continues the remote run's log and TensorBoard events
    log = RunLog(run.local, world.is_main, cfg.progress, start_step, cfg.max_steps)
    if world.is_main:
        (run.local / ck.CONFIG).write_text(to_yaml({"train": cfg, "loader": loader_cfg}))
        log.event("start" if resume is None else "resume", step=start_step, world_size=world.world_size,
                  precision=precision, lr=base_lr, effective_batch=effective, grad_accum=cfg.grad_accum,
                  checkpoint=run.where(resume) if resume else None, world_size_change=note, batch_norm=batch_norm)
    summary = PretrainSummary(str(cfg.run_dir), cfg.method, cfg.model, start_step, start_step, cfg.max_steps,
                              world.world_size)
    failure: Optional[BaseException] = None
    batches = _batches(loader)
    try:
        _loop(engine, method, batches, loader, generator, cfg, world, run, log, flag, base_lr, summary, digest,
              loader_cfg.image_size)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        batches.close()  # the loader's workers stop now (they ignore SIGTERM: exit would wait on them forever)
        log.close()
        if failure is None or not storage_failed(failure):  # a failed store would only hold the exit up
            try:
                run.sync(collective=False)  # ranks may be out of step here (an error on one): no collective
            except Exception as exc:  # the run's own error (if any) is the one to report
                logger.warning("could not upload the run's last log lines to %s: %s", cfg.run_dir, exc)
    return summary


def storage_failed(exc: BaseException) -> bool:
    """True when `exc` says the run directory's storage failed (it is not asked again before exiting)."""
    return isinstance(exc, StorageError) or fault_kind(exc) is not None


def _batches(loader):
    """Batches forever, epoch after epoch (the loader moves to the next epoch by itself)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise TrainingError("the loader gave no batch: the corpus has fewer samples than one batch per rank")


def _loop(engine, method, batches, loader, generator, cfg: TrainConfig, world: Dist, run: RunDir, log: RunLog,
          flag: PreemptionFlag, base_lr: float, summary: PretrainSummary, digest: Tuple[str, int],
          image_size: int) -> None:
    input_dtype = next(p for p in method.parameters()).dtype  # bf16/fp16 engines cast the model, not its inputs
    last = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    step, start = summary.start_step, time.perf_counter()
    images_seen, wait_s, window_start = 0, 0.0, time.perf_counter()
    inputs, logs = None, {}
    while step < last:
        lr = learning_rate(step, base_lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        method.begin_step(step, cfg.max_steps)
        losses = []
        for _ in range(cfg.grad_accum):
            t = time.perf_counter()
            batch = next(batches)
            wait_s += time.perf_counter() - t
            inputs = _inputs(batch, world.device, input_dtype, cfg.in_chans)
            loss, logs = engine(inputs, generator)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            images_seen += len(batch["key"])
        method.end_step(step, cfg.max_steps)
        step += 1
        local = sum(losses) / len(losses)
        total, signalled, bad = all_reduce_step([local, float(flag.signalled), float(local != local or
                                                                                      abs(local) == float("inf"))],
                                                world.device)
        mean_loss = total / world.world_size
        if bad:
            steps = run.complete_steps(warn=False)
            previous = run.where(ck.checkpoint_dir(run.local, steps[-1])) if steps else None
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
                               "train/memory_gib": _memory_gib(world.device),
                               **{f"train/{k}": float(v) for k, v in logs.items() if k != "loss"}})
            images_seen, wait_s, window_start = 0, 0.0, time.perf_counter()
        if cfg.image_every and step % cfg.image_every == 0 and step % cfg.checkpoint_every:
            rows = picture(method, inputs, cfg.seed)  # every rank: ZeRO-3 gathers weights in the forward
            if world.is_main and rows is not None:
                log.picture(step, rows, method.picture_tag, method.picture_rows)
        stopping = signalled > 0 or step == last
        if step % cfg.checkpoint_every == 0 or stopping:
            summary.checkpoint = save_checkpoint(engine, method, loader, generator, cfg, world, run, log, step,
                                                 inputs, image_size, digest)
        if signalled > 0:
            if world.is_main:
                ck.write_json(run.local / ck.PREEMPTED, {
                    "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "epoch_s": time.time(),
                    "checkpoint": summary.checkpoint,
                    "signal": flag.signal_name or "on another rank", "exit_code": ck.PREEMPTED_EXIT})
            log.event("preempted", step=step, checkpoint=summary.checkpoint)
            run.sync()
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


def _inputs(batch, device: torch.device, dtype: torch.dtype, channels: int):
    """The method's input on the training device, normalised to `channels`: the batch's images, or its views."""
    if "views" in batch:
        return [normalize_batch(v.to(device, non_blocking=True), channels=channels).to(dtype)
                for v in batch["views"]]
    return normalize_batch(batch["image"].to(device, non_blocking=True), channels=channels).to(dtype)


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
