"""The DALI counterpart of `ShardLoader`: `fn.readers.webdataset` over the shards and their `.idx` files, one
shard of the reader per rank, PNG decoding on the GPU (`mixed`) when one is present and on the CPU otherwise,
the same augmentation recipes, torch tensors out, resumable through DALI's checkpointing.

DALI reads whole shards, so it cannot skip samples that dedup marked in the manifest: for a reduced corpus, write
kept-only shards first (`medscale dedup URL --write-kept OUT`); the loader says so when it would be needed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pyarrow.compute as pc
import torch

from medscale.core.errors import ConfigError, InputError
from medscale.core.storage import filesystem, is_local, join
from medscale.data.augment import CROP_SCALE, IMAGENET_MEAN, IMAGENET_STD, SMALL_CROP_SCALE, view_specs
from medscale.data.config import AUGMENTS
from medscale.data.dataset import rank_and_world
from medscale.data.manifest import KEPT, keys_digest, read_manifest
from medscale.data.order import REMAINDERS
from medscale.data.shards import check_shard_name, idx_name

logger = logging.getLogger(__name__)


def gpu_available() -> bool:
    """Whether DALI's `mixed` (GPU) decoding can be used."""
    return torch.cuda.is_available()


def kept_only_shards(url: str, storage_options: Mapping[str, Any]) -> Tuple[List[str], bool, Tuple[str, int]]:
    """(committed shard names, whether any slice is 16-bit, `keys_digest` of their samples); a clear error when
    the shards hold samples that dedup dropped, which DALI's whole-shard reader cannot skip."""
    fs, root = filesystem(url, dict(storage_options))
    table = read_manifest(fs, root, columns=["key", "shard", "status", "bits"])
    in_shards = table.filter(pc.is_valid(table["shard"]))
    if not len(in_shards):
        raise InputError(f"{url}: no samples in shards; is this a `medscale shard` output?")
    not_kept = len(in_shards) - (pc.sum(pc.equal(in_shards["status"], KEPT)).as_py() or 0)
    if not_kept:
        raise ConfigError(f"{url}: {not_kept} samples in the shards are marked duplicate/excluded, and DALI reads "
                          f"whole shards; write kept-only shards with `medscale dedup {url} --write-kept OUT` and "
                          "load OUT, or use loader=torch (which skips them)")
    sixteen_bit = (pc.max(in_shards["bits"]).as_py() or 8) > 8
    shards = sorted(set(map(check_shard_name, in_shards["shard"].to_pylist())))
    return shards, sixteen_bit, keys_digest(in_shards["key"].to_pylist())


def local_paths(url: str, shards: List[str], storage_options: Mapping[str, Any],
                cache_dir: Optional[str] = None) -> List[str]:
    """Local paths of `shards` (remote ones downloaded once into `cache_dir`, with their `.idx`)."""
    fs, root = filesystem(url, dict(storage_options))
    if is_local(fs):
        return [join(root, s) for s in shards]
    cache = cache_dir or tempfile.mkdtemp(prefix="medscale-dali-")
    for s in shards:
        for name in (s, idx_name(s)):
            if not os.path.exists(os.path.join(cache, name)):
                fs.get_file(join(root, name), os.path.join(cache, name + ".part"))
                os.replace(os.path.join(cache, name + ".part"), os.path.join(cache, name))
    return [os.path.join(cache, s) for s in shards]


def _views(images, augment: str, specs: List[tuple], scale: float, mean, std):
    """DALI graph of the augmentation recipes of `medscale.data.augment` (same parameters)."""
    from nvidia.dali import fn, types

    def normalise(x, mirror=True):
        return fn.crop_mirror_normalize(x, mirror=fn.random.coin_flip() if mirror else 0, dtype=types.FLOAT,
                                        output_layout="CHW", mean=[m * scale for m in mean],
                                        std=[s * scale for s in std])

    size = specs[0][0]
    if augment == "resize":
        return [normalise(fn.resize(images, size=[size, size], interp_type=types.INTERP_CUBIC), mirror=False)]
    if augment == "mae":
        crop = fn.random_resized_crop(images, size=[size, size], random_area=[0.2, 1.0],
                                      interp_type=types.INTERP_CUBIC)
        return [normalise(crop)]
    views = []
    for view_size, area, blur_p in specs:
        x = fn.random_resized_crop(images, size=[view_size, view_size], random_area=list(area),
                                   interp_type=types.INTERP_CUBIC)
        jitter = fn.random.coin_flip(probability=0.8)
        x = fn.brightness_contrast(x, brightness=1.0 + jitter * fn.random.uniform(range=[-0.4, 0.4]),
                                   contrast=1.0 + jitter * fn.random.uniform(range=[-0.4, 0.4]))
        x = fn.cast(x, dtype=types.FLOAT)
        blurred = fn.gaussian_blur(x, sigma=fn.random.uniform(range=[0.1, 2.0]), window_size=2 * (view_size // 20) + 1)
        use = fn.random.coin_flip(probability=blur_p)
        views.append(normalise(x * (1 - use) + blurred * use))
    return views


class DaliLoader:
    """Batches `{"image" (or "views"), "label", "key"}` like `ShardLoader`, decoded and augmented by DALI."""

    def __init__(self, url: str, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: Optional[int] = None, world_size: Optional[int] = None, augment: str = "mae",
                 image_size: int = 224, small_size: int = 96, small_crops: int = 0,
                 crop_scale: Sequence[float] = CROP_SCALE, small_crop_scale: Sequence[float] = SMALL_CROP_SCALE,
                 channels: int = 3,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, num_threads: int = 2,
                 device: str = "auto", shuffle_buffer: int = 1024, remainder: str = "pad",
                 storage_options: Optional[Mapping[str, Any]] = None, cache_dir: Optional[str] = None) -> None:
        if remainder not in REMAINDERS:
            raise ConfigError(f"remainder must be one of {', '.join(REMAINDERS)}, got {remainder!r}")
        self.remainder = remainder
        if augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        if device not in ("auto", "gpu", "cpu"):
            raise ConfigError(f"device must be auto, gpu or cpu, got {device!r}")
        if device == "gpu" and not gpu_available():
            raise ConfigError("device=gpu but no CUDA device is visible; use device=auto or cpu")
        self.gpu = device == "gpu" or (device == "auto" and gpu_available())
        self.url, self.batch_size, self.seed, self.shuffle = url, batch_size, seed, shuffle
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.augment, self.image_size, self.small_size, self.small_crops = augment, image_size, small_size, small_crops
        self.specs = view_specs(image_size, small_size, small_crops, crop_scale, small_crop_scale)
        self.mean, self.std = list(mean)[:channels], list(std)[:channels]
        self.channels, self.num_threads, self.shuffle_buffer = channels, num_threads, shuffle_buffer
        self.storage_options = dict(storage_options or {})
        shards, self.sixteen_bit, self.corpus_digest = kept_only_shards(url, self.storage_options)
        self.paths = local_paths(url, shards, self.storage_options, cache_dir)
        self._checkpoint: Optional[str] = None
        self._pipe = None
        self._iter = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                      device_id=torch.cuda.current_device() if self.gpu else None, seed=self.seed,
                      enable_checkpointing=True)
        def pipeline():
            png, cls, meta = fn.readers.webdataset(
                paths=self.paths, index_paths=[p[:-4] + ".idx" for p in self.paths], ext=["png", "cls", "json"],
                missing_component_behavior="empty", random_shuffle=self.shuffle, initial_fill=self.shuffle_buffer,
                shard_id=self.rank, num_shards=self.world_size, name="Reader", seed=self.seed,
                pad_last_batch=self.remainder == "pad")
            dtype = types.UINT16 if self.sixteen_bit else types.UINT8
            colour = types.GRAY if self.channels == 1 else types.RGB
            images = fn.decoders.image(png, device="mixed" if self.gpu else "cpu", output_type=colour, dtype=dtype)
            scale = 65535.0 if self.sixteen_bit else 255.0
            views = _views(images, self.augment, self.specs, scale, self.mean, self.std)
            return (*views, fn.pad(cls, fill_value=0), fn.pad(meta, fill_value=0))

        pipe = pipeline(checkpoint=self._checkpoint) if self._checkpoint else pipeline()
        pipe.build()
        return pipe

    def _outputs(self) -> List[str]:
        n = 1 if self.augment in ("mae", "resize") else 2 + self.small_crops
        return [f"view{i}" for i in range(n)] + ["cls", "meta"]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if self._iter is None:
            self._pipe = self._build()
            # pad: every rank yields as many batches (the reader repeats its last sample); drop: full batches only
            policy = {"pad": LastBatchPolicy.FILL, "drop": LastBatchPolicy.DROP,
                      "uneven": LastBatchPolicy.PARTIAL}[self.remainder]
            self._iter = DALIGenericIterator(self._pipe, self._outputs(), reader_name="Reader",
                                             last_batch_policy=policy, auto_reset=True)
        for out in self._iter:
            data = out[0]
            batch: Dict[str, Any] = {"label": torch.tensor([_label(c) for c in data["cls"]], dtype=torch.int64),
                                     "key": [json.loads(bytes(m.tolist()).rstrip(b"\0"))["key"] for m in data["meta"]]}
            views = [data[name] for name in self._outputs()[:-2]]
            if len(views) == 1:
                batch["image"] = views[0]
            else:
                batch["views"] = views
            yield batch

    def state_dict(self) -> Dict[str, Any]:
        """DALI's pipeline checkpoint (reader position and random state)."""
        if self._pipe is None:
            return {"dali": self._checkpoint}
        return {"dali": self._iter.checkpoints()[0]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from a `state_dict()`; the pipeline is rebuilt from the checkpoint on the next iteration."""
        self._checkpoint, self._pipe, self._iter = state.get("dali"), None, None


def _label(cls_tensor: torch.Tensor) -> int:
    text = bytes(cls_tensor.tolist()).rstrip(b"\0").decode()
    return int(text) if text else -1
