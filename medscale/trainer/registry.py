"""The one registry of pre-training methods, torch-free so that the command line and config validation can list
the names without importing torch: name -> "module:Class" of a `PretrainMethod`; `create_method` imports it."""

from __future__ import annotations

import importlib
from typing import Any

METHODS = {
    "mae": "medscale.trainer.methods:MaeMethod",
    "simclr": "medscale.trainer.simclr:SimclrMethod",
    "moco": "medscale.trainer.moco:MocoMethod",
    "mocov3": "medscale.trainer.moco:Mocov3Method",
    "byol": "medscale.trainer.byol:ByolMethod",
    "swav": "medscale.trainer.swav:SwavMethod",
}


def method_class(name: str) -> Any:
    """The class registered as `name` (ValueError naming the choices for an unknown one)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_method(name: str, *args: Any, **kwargs: Any) -> Any:
    """`create_method("mae", train_cfg, image_size)`: the method registered as `name`, built."""
    return method_class(name)(*args, **kwargs)
