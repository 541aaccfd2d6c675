"""Feature sources (an exported backbone, a random initialisation, raw pixels) and their features, extracted in
batches once per (source digest, dataset digest, preprocessing) and cached as `.npz` files.

Checkpoint specs: an export folder (`card.json` + `backbone.safetensors`), a run directory (each of its complete
checkpoints' exports), either one local or in object storage (`s3://`: copied into a local folder first), `raw`
(the image at the dataset's own size, scaled to [0, 1] and flattened: no resize, no
normalisation), `random:TIMM_NAME` (timm's initialisation at the model's default input size) or `random:PATH`
(the architecture of an export folder, freshly initialised): the baselines every table shows beside the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from medscale.core import runs as ck
from medscale.core.card import CARD, WEIGHTS, Card, load_backbone, read_card
from medscale.core.digest import digest
from medscale.core.errors import InputError
from medscale.core.storage import join, mkstemp_shared
from medscale.eval import remote
from medscale.eval.datasets import LabelledSet


@dataclass(frozen=True)
class FeatureSource:
    """One thing to evaluate: `kind` is export | random | raw; `name` is what tables call it."""

    spec: str
    kind: str
    name: str
    path: Optional[str] = None  # export folder (export, random:PATH)
    model: Optional[str] = None  # timm name (random:TIMM_NAME)
    step: Optional[int] = None
    digest: str = ""
    url: Optional[str] = None  # the export in object storage (a node without `path` fetches it from there)


def _file_digest(path: Path) -> str:
    sha = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def _export(path: Path, name: Optional[str] = None, url: Optional[str] = None) -> FeatureSource:
    card = read_card(path)
    digest_ = digest(_file_digest(path / WEIGHTS), json.dumps(json.loads((path / CARD).read_text()), sort_keys=True),
                     n=16)  # of the card as written: the same digest (and cached results) across medscale versions
    step = card.step
    return FeatureSource(str(path), "export", name or f"{path.parent.name}", str(path), card.model,
                         step, digest_, url)


def on_this_node(source: FeatureSource, storage_options: Mapping[str, Any]) -> FeatureSource:
    """`source` with its export folder on this machine: a task on a node that does not share the driver's disk
    copies an export from object storage (its `url`) into this node's cache first."""
    if source.url is None or source.path is None or Path(source.path).is_dir():
        return source
    cache = Path.home() / ".cache" / "medscale" / remote.EXPORTS / Path(source.path).name
    return dataclasses.replace(source, path=str(remote.fetch_export(source.url, storage_options, cache)))


def _remote(url: str, storage_options: Mapping[str, Any], exports: Optional[Path]) -> List[FeatureSource]:
    """An export or a run directory in object storage: each export copied into `exports` first."""
    if exports is None:
        raise InputError(f"{url}: checkpoints in object storage are copied into a local folder first: set eval.out")
    if remote.is_export(url, storage_options):
        name = remote.base_name(url if remote.base_name(url) != ck.EXPORT else url.rstrip("/").rsplit("/", 1)[0])
        local = remote.fetch_export(url, storage_options, exports / remote.cache_name(url, name))
        return [_export(local, name, url)]
    found = remote.complete_checkpoints(url, storage_options)
    if not found:
        raise InputError(f"{url}: neither an exported backbone ({CARD} and {WEIGHTS}) nor a run directory with a "
                         "complete checkpoint yet")
    out = []
    for checkpoint in found:
        name, export = f"{remote.base_name(url)}@{ck.step_of(Path(checkpoint))}", join(checkpoint, ck.EXPORT)
        out.append(_export(remote.fetch_export(export, storage_options, exports / remote.cache_name(export, name)),
                           name, export))
    return out


def parse_checkpoints(specs: List[str], seed: int = 0, storage_options: Optional[Mapping[str, Any]] = None,
                      exports: Optional[Path] = None) -> List[FeatureSource]:
    """The sources `specs` name; a run directory expands to its complete checkpoints (oldest first); a random
    initialisation is drawn with `seed` (part of its digest). Specs in object storage (`s3://`, read with
    `storage_options`) are copied into `exports` first."""
    import timm

    out: List[FeatureSource] = []
    for spec in specs:
        if remote.is_remote(spec, storage_options):
            out.extend(_remote(spec, storage_options or {}, exports))
            continue
        if spec == "raw":
            out.append(FeatureSource(spec, "raw", "raw pixels", digest=digest_of_raw()))
            continue
        if spec.startswith("random:"):
            target = spec.split(":", 1)[1]
            if (Path(target) / CARD).is_file():
                card = read_card(target)
                out.append(FeatureSource(spec, "random", f"random {card.model}", target, card.model, None,
                                         digest("random", card.model, json.dumps(card.kwargs,
                                                                                  sort_keys=True), seed, n=16)))
            elif timm.is_model(target):
                out.append(FeatureSource(spec, "random", f"random {target}", None, target, None,
                                         digest("random", target, seed, n=16)))
            else:
                raise InputError(f"{spec}: timm has no model {target!r} and {target} is not an export folder; use "
                                 "random:TIMM_NAME or random:EXPORT_FOLDER")
            continue
        path = Path(spec)
        if (path / CARD).is_file() and (path / WEIGHTS).is_file():
            out.append(_export(path, path.name if path.name != ck.EXPORT else path.parent.name))
        elif (path / ck.CHECKPOINTS).is_dir():
            found = ck.complete_checkpoints(path)
            if not found:
                raise InputError(f"{path}: a run directory without a complete checkpoint yet")
            out.extend(_export(c / ck.EXPORT, f"{path.name}@{ck.step_of(c)}") for c in found)
        else:
            raise InputError(f"{spec}: not an exported backbone (expected {CARD} and {WEIGHTS}) nor a run "
                             "directory (expected checkpoints/); pass an export/ folder, a run directory, raw or "
                             "random:TIMM_NAME")
    return out


def digest_of_raw() -> str:
    """The raw-pixel source's digest (its preprocessing is the identity)."""
    return digest("raw", n=16)


def build_model(source: FeatureSource, seed: int = 0) -> Tuple[torch.nn.Module, Card]:
    """(timm model in eval mode without a classifier, its card) for an export or random source."""
    import timm

    if source.kind == "export":
        return load_backbone(source.path)
    torch.manual_seed(seed)
    if source.path:  # the export's architecture, freshly initialised
        card = read_card(source.path)
        return timm.create_model(card.model, pretrained=False, **card.kwargs).eval(), card
    model = timm.create_model(source.model, pretrained=False, num_classes=0).eval()
    cfg = model.pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))
    card = Card(source.model, int(size[-1]), list(cfg.get("mean", (0.5,) * 3)), list(cfg.get("std", (0.5,) * 3)),
                in_chans=int(size[0]))
    return model, card


def preprocess(images: np.ndarray, card: Card) -> torch.Tensor:
    """uint8 `images: [N, H, W]` or `[N, H, W, 3]` -> float `[N, C, S, S]` at the card's size, channels and
    normalisation (bilinear, antialiased)."""
    x = torch.tensor(images, dtype=torch.float32).div_(255)  # a copy: arrays from Ray are read-only
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    chans = card.in_chans
    if x.shape[1] != chans:
        x = x.mean(dim=1, keepdim=True) if chans == 1 else x.expand(-1, chans, -1, -1)
    size = card.image_size
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
    mean = torch.tensor(card.mean[:chans]).view(1, -1, 1, 1)
    std = torch.tensor(card.std[:chans]).view(1, -1, 1, 1)
    return (x - mean) / std


def _preprocessing_id(card: Optional[Card]) -> str:
    if card is None:
        return "identity"
    return digest(card.image_size, card.in_chans, list(card.mean), list(card.std), "bilinear-aa", n=8)


def device() -> torch.device:
    """Where evaluation computes: the GPU Ray gave this task (or this process sees), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray, card: Card, batch_size: int) -> np.ndarray:
    """Pooled features `[N, D]` of `images` (batches of `batch_size`, on the GPU where there is one)."""
    where = device()
    model = model.to(where)
    out = []
    for start in range(0, len(images), batch_size):
        out.append(model(preprocess(images[start:start + batch_size], card).to(where)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


FEATURES_VERSION = 1  # part of every cache key: raise it when preprocessing or embedding changes


def card_of(source: FeatureSource) -> Optional[Card]:
    """The preprocessing card of `source` without building its model (None for raw pixels)."""
    if source.kind == "raw":
        return None
    if source.path:
        return read_card(source.path)
    return build_model(source)[1]


def features(source: FeatureSource, dataset: LabelledSet, cache: Path, batch_size: int,
             seed: int = 0) -> Dict[str, np.ndarray]:
    """{split: float32 features `[N, D]`} of `dataset` by `source`, from the cache or extracted and cached; the
    model is built only on a cache miss."""
    model = None
    if source.kind == "random" and not source.path:  # timm's default card comes with its model: build it once
        model, card = build_model(source, seed)
    else:
        card = card_of(source)
    path = cache / f"{source.digest}-{dataset.digest}-{_preprocessing_id(card)}-v{FEATURES_VERSION}.npz"
    if path.exists():
        with np.load(path) as stored:
            return {k: stored[k] for k in stored.files}
    if card is None:
        result = {s: (im.reshape(len(im), -1).astype(np.float32) / 255) for s, im in dataset.images.items()}
    else:
        if model is None:
            model, card = build_model(source, seed)
        result = {s: embed(model, im, card, batch_size) for s, im in dataset.images.items()}
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_shared(str(cache), suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **result)
    os.replace(tmp, path)  # atomic: a concurrent job reads a whole file or extracts again
    return result
