"""The one registry of pre-training methods, torch-free so that the command line and config validation can list
the names without importing torch: name -> "module:Class" of a `PretrainMethod`; `create_method` imports it.
Another package adds one with `register_method` or the entry-point group `medscale.methods`."""

from __future__ import annotations

from typing import Any

from medscale.core.registry import Registry

METHODS = Registry("method", "medscale.methods", {
    "mae": "medscale.trainer.methods:MaeMethod",
    "simclr": "medscale.trainer.simclr:SimclrMethod",
    "moco": "medscale.trainer.moco:MocoMethod",
    "mocov3": "medscale.trainer.moco:Mocov3Method",
    "byol": "medscale.trainer.byol:ByolMethod",
    "swav": "medscale.trainer.swav:SwavMethod",
})
register_method = METHODS.register


def method_class(name: str) -> Any:
    """The class registered as `name` (ValueError naming the choices for an unknown one)."""
    return METHODS.load(name)


def create_method(name: str, *args: Any, **kwargs: Any) -> Any:
    """`create_method("mae", train_cfg, image_size)`: the method registered as `name`, built."""
    return method_class(name)(*args, **kwargs)
