"""Loading DeepSpeed's checkpoint files without running code from them.

DeepSpeed unpickles its states with `torch.load(weights_only=False)`, in its checkpoint engine and, bypassing it, in
the universal-checkpoint load and conversion: a crafted file in a run directory would run code on every rank at
resume. Here every `torch.load` made while DeepSpeed loads runs with `weights_only=True` and an allow-list of exactly
the DeepSpeed types its checkpoints hold (found with `torch.serialization.get_unsafe_globals_in_checkpoint` on
ZeRO 0-3, fp32/fp16 and universal checkpoints). A file that needs anything else fails to load: the checkpoint is
damaged, and the resume falls back to the previous one.

    with weights_only_loads():
        engine.load_checkpoint(path)

`python -m medscale.trainer.safeload --input_folder IN --output_folder OUT ...` (ds_to_universal's options) converts
a checkpoint to DeepSpeed's universal format the same way.
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
from contextlib import contextmanager
from typing import Iterator, List

import torch

ALLOWED = (  # the non-tensor types in DeepSpeed's checkpoint files: plain records, no behaviour at unpickling
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL (\S+)")


def allowed_types() -> List[type]:
    """The classes of `ALLOWED` (DeepSpeed imported)."""
    found = []
    for path in ALLOWED:
        module, _, name = path.rpartition(".")
        found.append(getattr(importlib.import_module(module), name))
    return found


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside: `torch.load` unpickles tensors, containers and the `ALLOWED` types only, whatever its caller asks."""
    original = torch.load
    allowed = allowed_types()

    def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
        try:
            with torch.serialization.safe_globals(allowed):
                return original(f, map_location=map_location, weights_only=True, mmap=mmap, **kwargs)
        except pickle.UnpicklingError as exc:
            found = _UNSUPPORTED.search(str(exc))
            raise pickle.UnpicklingError(
                f"{f}: refused, it holds {found.group(1) if found else 'a type'} outside the allow-list of tensors "
                "and DeepSpeed's records (nothing of it ran)") from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


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
