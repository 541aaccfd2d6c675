"""One factory for the two loaders: `create_loader(url, cfg)` -> `ShardLoader` (torch) or `DaliLoader`."""

from __future__ import annotations

import logging
from typing import Optional

from medscale.core.errors import ConfigError
from medscale.data.augment import TRANSFORMS
from medscale.data.config import LoaderConfig
from medscale.data.dataset import ShardDataset, ShardLoader

logger = logging.getLogger(__name__)


def torch_transform(cfg: LoaderConfig):
    """The torch twin of the DALI graph named by `cfg.augment`."""
    return TRANSFORMS[cfg.augment](cfg)


def _dali_usable(url: str, cfg: LoaderConfig) -> Optional[str]:
    """None when DALI can serve `url` on a GPU, else why not."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return "nvidia-dali is not installed: pip install 'medscale[gpu]'"
    from medscale.data.dali import gpu_available, kept_only_shards

    if not gpu_available():
        return "no GPU (the torch loader is faster than DALI's CPU mode on few cores)"
    try:
        kept_only_shards(url, cfg.storage_options)  # a check only: nothing downloaded twice
    except ConfigError as exc:
        return str(exc)
    return None


def create_loader(url: str, cfg: LoaderConfig, rank: Optional[int] = None, world_size: Optional[int] = None):
    """The loader `cfg.loader` names (`auto`: DALI on a GPU when it can read the shards as they are, else torch)."""
    cfg = cfg.for_model("mae", 0, 3)  # what no trainer asked for: MAE's crops, no small views, 3 channels
    kind = cfg.loader
    if kind == "auto":
        why_not = _dali_usable(url, cfg)
        kind = "torch" if why_not else "dali"
        logger.info("loader=auto chose %s%s", kind, f" ({why_not})" if why_not else "")
    if kind == "dali" and cfg.source_weights:
        if cfg.loader == "dali":
            raise ConfigError("loader.source_weights needs loader=torch: DALI reads whole shards in order")
        kind = "torch"
    if kind == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise ConfigError("loader.loader=dali needs NVIDIA DALI: pip install 'medscale[gpu]' (or use "
                              "loader.loader=torch)") from None
        from medscale.data.dali import DaliLoader

        return DaliLoader(url, batch_size=cfg.batch_size, seed=cfg.seed, shuffle=cfg.shuffle, rank=rank,
                          world_size=world_size, augment=cfg.augment, image_size=cfg.image_size,
                          small_size=cfg.small_size, small_crops=cfg.small_crops, crop_scale=cfg.crop_scale,
                          small_crop_scale=cfg.small_crop_scale, channels=cfg.channels, device=cfg.device,
                          remainder=cfg.remainder,
                          storage_options=cfg.storage_options, cache_dir=cfg.cache_dir)
    dataset = ShardDataset(url, seed=cfg.seed, shuffle=cfg.shuffle, rank=rank, world_size=world_size,
                           batch_size=cfg.batch_size, shuffle_window=cfg.shuffle_window, remainder=cfg.remainder,
                           transform=torch_transform(cfg), storage_options=cfg.storage_options,
                           cache_dir=cfg.cache_dir, source_weights=cfg.source_weights)
    return ShardLoader(dataset, num_workers=cfg.num_workers)
