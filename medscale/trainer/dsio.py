"""DeepSpeed's checkpoint files, read without running code from them and written so that every rank learns of a
failed write.

Reading: DeepSpeed unpickles its states with `weights_only=False` loads, in its checkpoint engine and, bypassing
it, in the universal-checkpoint load and conversion: a crafted file in a run directory would run code on every rank
at resume. Every `torch.load` made while DeepSpeed loads runs with `weights_only=True` and an allow-list of exactly
the DeepSpeed types its checkpoints hold (found with `torch.serialization.get_unsafe_globals_in_checkpoint` on
ZeRO 0-3, fp32/fp16 and universal checkpoints). A file that needs anything else fails to load: the checkpoint is
damaged, and the resume falls back to the previous one.

Writing: a rank whose write fails (a full disk) would leave DeepSpeed's collective save with an exception while
the other ranks wait in its barrier. `GuardedCheckpointEngine` records the failure instead, so that every rank
reaches the end of the save and all learn of it together (`saving.save_checkpoint`).

    with weights_only_loads():
        engine.load_checkpoint(path)

`python -m medscale.trainer.dsio --input_folder IN --output_folder OUT ...` (ds_to_universal's options) converts
a checkpoint to DeepSpeed's universal format with the same loads.
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
from contextlib import contextmanager
from typing import Iterator, List

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

from medscale.core.errors import ConfigError
from medscale.core.faults import describe_write

ALLOWED = (  # the non-tensor types in DeepSpeed's checkpoint files: plain records, no behaviour at unpickling
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL (\S+)")


def allowed_types() -> List[type]:
    """The classes of `ALLOWED`."""
    found = []
    for path in ALLOWED:
        module, _, name = path.rpartition(".")
        found.append(getattr(importlib.import_module(module), name))
    return found


def safe_load(f, map_location=None, **kwargs):
    """`torch.load` of tensors, containers and the `ALLOWED` types only; anything else is an UnpicklingError naming
    what the file would have run."""
    try:
        with torch.serialization.safe_globals(allowed_types()):
            return _torch_load(f, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED.search(str(exc))
        raise pickle.UnpicklingError(f"{f}: refused, it holds {found.group(1) if found else 'a type'} outside the "
                                     "allow-list of tensors and DeepSpeed's records (nothing of it ran)") from None


_torch_load = torch.load  # the real one, also while `weights_only_loads` has replaced it


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside: every `torch.load` is `safe_load`, whatever its caller asks (DeepSpeed's universal paths call
    torch.load themselves, past the checkpoint engine)."""

    def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
        return safe_load(f, map_location=map_location, mmap=mmap, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = _torch_load


class GuardedCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with `safe_load` for loads, and saves that record their first failure
    (`failure`, read and cleared by `take_failure`) instead of raising; later saves of the same checkpoint are
    skipped."""

    def __init__(self, config_params=None) -> None:
        super().__init__(config_params)
        self.failure = ""

    def save(self, state_dict, path: str) -> None:
        """Write `state_dict` to `path`, or record why it could not be written."""
        if self.failure:
            return
        try:
            super().save(state_dict, path)
        except Exception as exc:
            self.failure = describe_write(exc, path)

    def load(self, path: str, map_location=None):
        """A state file, weights-only."""
        return safe_load(path, map_location=map_location)

    def take_failure(self) -> str:
        """The recorded failure ('' when every save succeeded), cleared for the next checkpoint."""
        failure, self.failure = self.failure, ""
        return failure


def install(engine) -> GuardedCheckpointEngine:
    """Give a DeepSpeed engine the guarded checkpoint engine (its stock one is a `TorchCheckpointEngine`)."""
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise ConfigError(f"medscale expects DeepSpeed's TorchCheckpointEngine, found "
                           f"{type(engine.checkpoint_engine).__name__}; remove checkpoint engine settings from "
                           "train.deepspeed")
    engine.checkpoint_engine = GuardedCheckpointEngine(engine._config)
    return engine.checkpoint_engine


def replay_cpu_adam_steps(optimizer) -> int:
    """After a load, give DeepSpeed's CPU Adam kernel the bias-correction state an uninterrupted run has; returns
    the steps replayed. The kernel (behind `DeepSpeedCPUAdam`, and behind `FusedAdam` on the CPU accelerator) keeps
    beta**t in C++ as a float running product, one multiplication a step, but computes pow(beta, t) after a load:
    the two differ in the last bit, and the weights would drift from the uninterrupted run's. Replaying the steps
    on a one-element dummy (lr and weight decay 0) rebuilds the same product, so resume stays bit-exact. torch's
    Adam and the CUDA kernels derive it from the step each time and need nothing."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.adam.fused_adam import multi_tensor_applier

    base = getattr(optimizer, "optimizer", optimizer)  # ZeRO wraps the optimizer that steps
    if not isinstance(base, (DeepSpeedCPUAdam, FusedAdam)):
        return 0
    params = [p for group in base.param_groups for p in group["params"]]
    steps = {int(state["step"]) for state in base.state.values() if "step" in state}
    if len(steps) != 1 or any(p.device.type != "cpu" for p in params):
        return 0
    step, group = steps.pop(), base.param_groups[0]
    beta1, beta2 = group["betas"]
    dummy = [torch.zeros(1) for _ in range(4)]  # gradient, parameter, exp_avg, exp_avg_sq
    for t in range(1, step + 1):
        if isinstance(base, DeepSpeedCPUAdam):
            base.ds_opt_adam.adam_update(base.opt_id, t, 0.0, beta1, beta2, group["eps"], 0.0,
                                         group["bias_correction"], dummy[1], dummy[0], dummy[2], dummy[3])
        else:
            multi_tensor_applier(base.multi_tensor_adam, base._dummy_overflow_buf, [[d] for d in dummy], 0.0, beta1,
                                 beta2, group["eps"], t, base.adam_w_mode, int(group["bias_correction"]), 0.0)
    return step


def convert_to_universal(argv: List[str]) -> None:
    """DeepSpeed's `ds_to_universal` with `argv` (its own options), under `weights_only_loads` (its worker
    processes are forked, so they inherit it)."""
    from deepspeed.checkpoint import ds_to_universal

    sys.argv = ["ds_to_universal", *argv]
    args = ds_to_universal.parse_arguments()
    with weights_only_loads():
        ds_to_universal.main(args)


if __name__ == "__main__":
    convert_to_universal(sys.argv[1:])
