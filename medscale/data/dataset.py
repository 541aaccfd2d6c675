"""`ShardDataset`: a torch IterableDataset over the shards of `medscale shard`, deterministic, exactly-once across
ranks and workers, resumable mid-epoch (also with another world size); `ShardLoader` keeps its state in step.

    ds = ShardDataset("s3://bucket/corpus", seed=0, batch_size=64, transform=mae_transform(224))
    loader = ShardLoader(ds, num_workers=4)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader: ...          # batch["image"]: [64, 3, 224, 224], batch["key"], batch["label"]
        state = loader.state_dict()       # save with the checkpoint; loader.load_state_dict(state) resumes
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from medscale.core.errors import ConfigError, MedscaleError
from medscale.core.faults import TRANSIENT, fault_kind
from medscale.core.storage import filesystem, is_local
from medscale.data.augment import to_tensor
from medscale.data.index import SampleIndex, ShardReader, load_index
from medscale.data.manifest import keys_digest
from medscale.data.order import (
    REMAINDERS,
    epoch_order,
    rank_stream,
    remaining,
    sample_seeds,
    weighted_order,
    worker_stream,
)
from medscale.data.png import decode_png

logger = logging.getLogger(__name__)


def rank_and_world(rank: Optional[int], world_size: Optional[int]) -> tuple:
    """Rank and world size from the arguments, else torch.distributed, else the torchrun environment, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if env_rank is not None and env_world is not None:
        return int(env_rank), int(env_world)
    return 0, 1


class ShardDataset(IterableDataset):
    """Samples `{"key", "image" (or "views"), "label", "index"}` of the kept rows of a sharding output, in the
    (seed, epoch) order.

    Every kept sample is delivered once per epoch across all ranks and workers; `remainder` says what happens when
    the count does not divide by the world size: `pad` (repeat the epoch's first samples so every rank has as many
    batches; the DDP default), `drop` (leave them out), `uneven` (exactly once, ranks may differ by one sample).
    Pass the DataLoader's batch size as `batch_size` so that workers split the stream in whole batches.
    """

    def __init__(self, url: str, *, seed: int = 0, shuffle: bool = True, rank: Optional[int] = None,
                 world_size: Optional[int] = None, batch_size: int = 1, shuffle_window: int = 4096,
                 remainder: str = "pad", transform: Optional[Callable[[np.ndarray], Any]] = None,
                 storage_options: Optional[Mapping[str, Any]] = None, cache_dir: Optional[str] = None,
                 source_weights: Optional[Mapping[str, float]] = None) -> None:
        super().__init__()
        if remainder not in REMAINDERS:
            raise ConfigError(f"remainder must be one of {', '.join(REMAINDERS)}, got {remainder!r}")
        if batch_size < 1 or shuffle_window < 1:
            raise ConfigError("batch_size and shuffle_window must be >= 1")
        self.url = url
        self.seed, self.shuffle, self.window, self.remainder = seed, shuffle, shuffle_window, remainder
        self.rank, self.world_size = rank_and_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world size {self.world_size}")
        self.batch_size = batch_size
        self.transform = transform or to_tensor
        self.storage_options = dict(storage_options or {})
        # one cache for every worker and epoch of this dataset, so that remote shards are downloaded once
        local = is_local(filesystem(url, self.storage_options)[0])
        self.cache_dir = cache_dir or (None if local else tempfile.mkdtemp(prefix="medscale-shards-"))
        self.index: SampleIndex = load_index(url, self.storage_options)
        self.epoch = 0
        self._start = 0  # global samples of this epoch consumed before this run (a resume point)
        self._delivered = 0  # samples this rank delivered since `_start` (counted in the main process)
        self._completed = False
        self.skipped = self.index.missing  # samples logged and left out (per process; workers count their own)
        self._groups, self._weights = self._source_groups(dict(source_weights or {}))

    def _source_groups(self, weights: Dict[str, float]) -> tuple:
        """(group id per sample `[N]`, weight per group), or (None, None) when every source has weight 1."""
        names, groups = np.unique(self.index.sources.astype(str), return_inverse=True)
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError(f"loader.source_weights names {unknown}, which {self.url} does not have; its sources: "
                              f"{', '.join(names)}")
        bad = {k: v for k, v in weights.items() if not v > 0}
        if bad:
            raise ConfigError(f"loader.source_weights must be > 0, got {bad}")
        if all(weights.get(n, 1.0) == 1.0 for n in names):
            return None, None
        return groups.astype(np.int64), [float(weights.get(n, 1.0)) for n in names]

    # -- order ------------------------------------------------------------------------------------------------
    def _consumed(self) -> int:
        return self._start + self._delivered * self.world_size

    def _rest(self) -> np.ndarray:
        """What every rank together still delivers in the current epoch (the same on every rank)."""
        order = epoch_order(self.index.sizes, self.seed, self.epoch, self.shuffle, self.window)
        if self._weights is not None:
            order = weighted_order(order, self._groups, self._weights, self.seed, self.epoch, self.window)
        return remaining(order, self._consumed(), self.world_size, self.remainder)

    def _rank_samples(self) -> np.ndarray:
        return rank_stream(self._rest(), self.rank, self.world_size)

    def __len__(self) -> int:
        """Samples this rank still delivers in the current epoch."""
        return len(self._rank_samples())

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (its own order); the current epoch is kept as is, so a resumed run can call this too."""
        if epoch != self.epoch:
            self.epoch, self._start, self._delivered, self._completed = epoch, 0, 0, False

    def _begin(self) -> None:
        """Called in the main process when an iteration starts: after a finished epoch, move on to the next. An
        epoch is finished when it was iterated to its end, or when nothing of it is left (a state saved after its
        last batch, before the iteration ended)."""
        if self._completed or (self._consumed() > 0 and not len(self._rest())):
            self.set_epoch(self.epoch + 1)

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Where this epoch stands, in global samples (valid for any world size)."""
        return {"epoch": self.epoch, "seed": self.seed, "consumed": self._consumed(),
                "num_samples": len(self.index), "completed": self._completed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the rest of the epoch is what the uninterrupted run would have delivered."""
        if state.get("seed", self.seed) != self.seed:
            raise ConfigError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        if state.get("num_samples", len(self.index)) != len(self.index):
            logger.warning("the corpus changed since the state was saved (%s -> %d samples): the epoch order differs",
                           state.get("num_samples"), len(self.index))
        self.epoch, self._start, self._delivered = int(state["epoch"]), int(state["consumed"]), 0
        self._completed = bool(state.get("completed", False))

    def _count(self, n: int) -> None:
        self._delivered += n

    # -- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        if info is None:
            self._begin()
        stream = self._rank_samples()
        if info is not None:
            stream = worker_stream(stream, info.id, info.num_workers, self.batch_size)
        reader = ShardReader(self.index.root_url, self.storage_options, self.cache_dir)
        seeds = sample_seeds(self.seed, self.epoch, stream)
        try:
            for i, seed in zip(stream, seeds):
                sample = self._load(reader, int(i), int(seed))
                if info is None:
                    self._count(1)
                if sample is not None:
                    yield sample
        finally:
            reader.close()
        if info is None:
            self._completed = True

    def _load(self, reader: ShardReader, i: int, seed: int) -> Optional[Dict[str, Any]]:
        ix = self.index
        shard, key = ix.shards[ix.shard_of[i]], ix.keys[i]
        try:
            pixels = decode_png(reader.read(shard, int(ix.offsets[i]), int(ix.lengths[i]), f"{key}.png"))
        except (OSError, MedscaleError, ValueError) as exc:  # a missing or damaged shard: log it, count, go on
            if fault_kind(exc) == TRANSIENT:  # a failed attempt (network), not damage: stop, the rerun resumes
                raise
            self.skipped += 1
            logger.error("skipping sample %s of %s: %s", key, shard, exc)
            return None
        # this sample's own stream (resumes augment alike): the CPU generator only, where fork_rng + manual_seed
        # would seed every accelerator backend too (~0.2 ms a sample)
        saved = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            out = self.transform(pixels)
        finally:
            torch.set_rng_state(saved)
        name = "views" if isinstance(out, (list, tuple)) else "image"  # contrastive transforms give several views
        return {"key": key, name: out, "label": int(ix.labels[i]), "index": i}


def ignore_preemption_signals(worker_id: int) -> None:
    """In loader workers: ignore SIGTERM/SIGUSR1, which torchrun and schedulers send to the whole process group;
    the trainer handles them (it saves at the next step boundary) and stops its workers itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _same_channels(images: list) -> list:
    """Grey `[1, H, W]` images repeated to 3 channels where a batch also holds RGB ones (uint8 output keeps grey on
    one channel), so that they stack."""
    if len({image.shape[0] for image in images}) == 1:
        return images
    return [image.expand(3, -1, -1) if image.shape[0] == 1 else image for image in images]


def collate_samples(samples: list) -> Dict[str, Any]:
    """`default_collate` of `ShardDataset` samples, after aligning the channels of images (or of each view)."""
    if samples and "image" in samples[0]:
        images = _same_channels([s["image"] for s in samples])
        samples = [{**s, "image": image} for s, image in zip(samples, images)]
    elif samples and "views" in samples[0]:
        views = [_same_channels(list(v)) for v in zip(*(s["views"] for s in samples))]
        samples = [{**s, "views": [v[j] for v in views]} for j, s in enumerate(samples)]
    return default_collate(samples)


class ShardLoader(DataLoader):
    """A DataLoader over a `ShardDataset` that counts delivered batches in the main process, so that
    `state_dict()` is exact with any number of workers."""

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, **kwargs: Any) -> None:
        if kwargs.pop("persistent_workers", False):
            raise ConfigError("ShardLoader needs fresh workers each epoch (persistent_workers=False)")
        kwargs.setdefault("pin_memory", torch.cuda.is_available())
        kwargs.setdefault("worker_init_fn", ignore_preemption_signals)
        kwargs.setdefault("collate_fn", collate_samples)
        super().__init__(dataset, batch_size=dataset.batch_size, num_workers=num_workers, **kwargs)

    def __iter__(self):
        dataset: ShardDataset = self.dataset  # type: ignore[assignment]
        if self.num_workers == 0:
            yield from super().__iter__()  # the dataset counts in this process
            return
        dataset._begin()
        for batch in super().__iter__():
            dataset._count(len(batch["key"]))
            yield batch
        dataset._completed = True

    @property
    def corpus_digest(self) -> Tuple[str, int]:
        """(digest, count) of the samples this loader reads, from its index (`keys_digest`)."""
        return keys_digest(self.dataset.index.keys)  # type: ignore[union-attr]

    def state_dict(self) -> Dict[str, Any]:
        """The dataset's position (global samples consumed in the epoch)."""
        return self.dataset.state_dict()  # type: ignore[union-attr]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state`."""
        self.dataset.load_state_dict(state)  # type: ignore[union-attr]
