"""Resuming a run: what may change between a checkpoint and the config (the model may not; the schedule and
the corpus may, with a warning), and how a checkpoint moves to another world size (DeepSpeed's universal format;
the global batch kept where it can be)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

from medscale.core import runs as ck
from medscale.core.errors import ConfigError, MedscaleError
from medscale.trainer.config import TrainConfig
from medscale.trainer.distributed import Dist, first_failure

logger = logging.getLogger(__name__)


class TrainingError(MedscaleError):
    """Training cannot go on (a non-finite loss, a checkpoint that cannot be converted); the message says what to
    do."""


SCHEDULE_KEYS = ("max_steps", "blr", "min_lr", "warmup_steps", "weight_decay", "betas", "clip_grad", "grad_accum")


def model_keys(cfg: TrainConfig, image_size: int) -> Dict[str, Any]:
    """What defines the model: a checkpoint cannot be resumed with any of it changed."""
    options = cfg.method_options()  # None: a method without options
    return {"method": cfg.method, "model": cfg.model, "patch_size": cfg.patch_size, "in_chans": cfg.in_chans,
            "image_size": image_size, "method_options": dataclasses.asdict(options)
            if dataclasses.is_dataclass(options) and not isinstance(options, type) else {}}


def with_later_defaults(saved: Dict[str, Any], cfg: TrainConfig) -> Dict[str, Any]:
    """A checkpoint's model keys with the method options added since it was written at their defaults (an option
    is added with the default that keeps the earlier behaviour, so an older run still resumes)."""
    options = cfg.method_options()
    if "method_options" not in saved or not dataclasses.is_dataclass(options) or isinstance(options, type):
        return saved
    return {**saved, "method_options": {**dataclasses.asdict(type(options)()), **saved["method_options"]}}


def check_resume(meta: Dict[str, Any], cfg: TrainConfig, image_size: int, digest: Tuple[str, int],
                  path: Path) -> None:
    """The model may not change (an error naming what differs); schedule keys may (a warning each); a changed
    corpus (a dedup rerun changes the kept set) is a warning with the counts."""
    if (meta.get("method"), meta.get("model")) != (cfg.method, cfg.model):
        raise ConfigError(f"{path}: this run directory holds checkpoints of {meta.get('method')} "
                          f"{meta.get('model')}, the config asks for {cfg.method} {cfg.model}; use another "
                          "train.run_dir, or the model it was started with")
    saved, now = with_later_defaults(meta.get("model_keys", {}), cfg), model_keys(cfg, image_size)
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    if changed:
        what = ", ".join(f"{k}: {saved[k]} -> {now[k]}" for k in changed)
        raise ConfigError(f"{path}: the model changed since this checkpoint ({what}); use another train.run_dir, "
                          "or the settings it was started with")
    for key in SCHEDULE_KEYS:
        before, after = meta.get("schedule", {}).get(key), getattr(cfg, key)
        if key in meta.get("schedule", {}) and before != (list(after) if isinstance(after, (list, tuple)) else after):
            logger.warning("train.%s changed since %s: %s -> %s (the schedule goes on with the new value)", key,
                           path.name, before, after)
    if meta.get("manifest_digest") and meta["manifest_digest"] != digest[0]:
        logger.warning("the corpus changed since %s (kept samples %s -> %d, e.g. a dedup rerun): the epoch order "
                       "differs from here on", path.name, meta.get("kept_samples"), digest[1])


def keep_global_batch(saved_effective: int, batch_size: int, world_size: int, grad_accum: int) -> Tuple[int, str]:
    """(gradient accumulation, what the log says) on another world size: the saved global batch is kept by
    adjusting the accumulation where it divides; otherwise the configured one stays and the lr follows the rule."""
    per_step = batch_size * world_size
    if saved_effective % per_step == 0:
        accum = saved_effective // per_step
        return accum, f"global batch {saved_effective} kept: gradient accumulation {grad_accum} -> {accum}"
    new = per_step * grad_accum
    return grad_accum, (f"global batch {saved_effective} cannot be split over {world_size} ranks of {batch_size}: "
                        f"now {new}, and the lr follows the rule (blr x {new} / 256)")


def to_universal(resume: Path, world: Dist, converter: bool) -> Path:
    """DeepSpeed's universal checkpoint of `resume` for another world size, converted once where it is read
    (`converter`: rank 0 on a shared filesystem, each node's first process in its copy of a remote run), by
    `dsio`'s converter: nothing in the checkpoint is unpickled beyond tensors and DeepSpeed's records."""
    target = resume / "universal"
    failure = ""
    if converter and not (target / ck.COMPLETE).exists():
        shutil.rmtree(target, ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "medscale.trainer.dsio", "--input_folder",
                               str(resume / ck.DS_TAG), "--output_folder", str(target / ck.DS_TAG),
                               "--inject_missing_state"], capture_output=True, text=True)
        if done.returncode == 0:
            ck.mark_complete(target, 0)
        else:
            failure = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
    rank, failure = first_failure(failure)  # every rank learns of a failure: none hangs
    if failure:
        raise TrainingError(f"{resume}: conversion to a universal checkpoint failed ({failure}); relaunch on the "
                            "world size it was saved with to resume as it was").held_by(rank)
    return target
