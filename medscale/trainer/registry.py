"""The one registry of pre-training methods, torch-free so that the command line and config validation can list
the names and check each method's section without importing torch: name -> "module:Class" of a `PretrainMethod`,
with its options dataclass (its `train.NAME` section); `create_method` imports and builds it. Another package adds
one with `register_method` or the entry-point group `medscale.methods`; its class's `Options` is its section."""

from __future__ import annotations

from typing import Any

from medscale.core.config import with_sections
from medscale.core.registry import Registry
from medscale.trainer.config import TrainConfig

METHODS = Registry("method", "medscale.methods", {
    "mae": "medscale.trainer.methods:MaeMethod",
    "simclr": "medscale.trainer.simclr:SimclrMethod",
    "moco": "medscale.trainer.moco:MocoMethod",
    "mocov3": "medscale.trainer.moco:Mocov3Method",
    "byol": "medscale.trainer.byol:ByolMethod",
    "swav": "medscale.trainer.swav:SwavMethod",
}, options={
    "mae": "medscale.trainer.options:MaeOptions",
    "simclr": "medscale.trainer.options:SimclrOptions",
    "moco": "medscale.trainer.options:MocoOptions",
    "mocov3": "medscale.trainer.options:Mocov3Options",
    "byol": "medscale.trainer.options:ByolOptions",
    "swav": "medscale.trainer.options:SwavOptions",
})
register_method = METHODS.register


def method_class(name: str) -> Any:
    """The class registered as `name` (ValueError naming the choices for an unknown one)."""
    return METHODS.load(name)


def train_config_class() -> type:
    """`TrainConfig` with a section per registered method that has options (`train.mae`, `train.swav`, ...)."""
    return with_sections(TrainConfig, METHODS, "train")


def train_config(**values: Any) -> TrainConfig:
    """A `train` section with every method's section, `values` set (`train_config(method="moco")`)."""
    return train_config_class()(**values)


def create_method(name: str, cfg: TrainConfig, image_size: int) -> Any:
    """`create_method("mae", train_cfg, image_size)`: the method registered as `name`, built from its own options
    (`cfg.mae`) and the backbone `cfg` names."""
    options_class = METHODS.options(name)
    options = getattr(cfg, name, None) if options_class is not None else None
    if options_class is not None and options is None:  # a bare TrainConfig: the method's defaults
        options = options_class()
    return method_class(name)(options, cfg.model_spec(), image_size)
