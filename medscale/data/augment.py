"""Augmentation pipelines for the trainers: 8-bit slices are cropped and resized as bytes (torchvision's uint8
kernels, ~2x its float ones), 16-bit slices as float32 so that they keep their precision until the crop.

`to_tensor` turns a stored slice (`[H, W]` uint8/uint16 or `[H, W, 3]` uint8) into `[C, H, W]` float32 in [0, 1];
`mae_transform` is MAE's recipe; `contrastive_transform` returns two (or multi-crop) views as in SimCLR/MoCo/BYOL
and SwAV. The DALI pipeline (`medscale.data.dali`) implements the same recipes with DALI operators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

if TYPE_CHECKING:
    from medscale.data.config import LoaderConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(pixels: np.ndarray, channels: int = 3) -> torch.Tensor:
    """`[H, W]` or `[H, W, 3]` uint8/uint16 -> `[channels, H, W]` float32 in [0, 1] (grey repeated to 3 channels)."""
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    x = torch.from_numpy(np.ascontiguousarray(pixels).astype(np.float32) / scale)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 3 and channels == 1:
        x = x.mean(dim=0, keepdim=True)
    return x.contiguous()


def native_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A stored slice on its own channels, for the geometry: uint8 -> `[C, H, W]` uint8 (no copy when writable),
    uint16 -> `[C, H, W]` float32 in [0, 1]."""
    if pixels.dtype != np.uint8:
        return to_tensor(pixels, channels=1 if pixels.ndim == 2 else 3)
    x = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]; a float tensor passes unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey `[1, H, W]` repeated to 3 channels (after the crop: 3x less resampling work), or RGB averaged to 1."""
    if x.shape[0] == 1 and channels == 3:
        return x.expand(3, -1, -1)
    if x.shape[0] == 3 and channels == 1:
        if x.dtype == torch.uint8:
            return x.float().mean(dim=0, keepdim=True).round_().to(torch.uint8)
        return x.mean(dim=0, keepdim=True)
    return x


def _byte_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 output: grey stays `[1, H, W]` (3x fewer bytes through shared memory and to the GPU; `normalize_batch`
    repeats it on the training device), RGB is averaged to 1 channel for a 1-channel model."""
    return x if x.shape[0] == 1 else _channels(x, channels)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1] -> uint8 (what crosses process boundaries: 4x fewer bytes than float32)."""
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def normalize_batch(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, channels: Optional[int] = None) -> torch.Tensor:
    """`images: [N, C, H, W]` uint8 (the loader's `batch_dtype: uint8`; C = 1 for a batch of grey slices) ->
    `[N, channels, H, W]` float32 normalised, on their device (the trainer's side of the uint8 path, as FFCV and
    timm's prefetcher do; grey is repeated here, in the same pass); float batches pass unchanged."""
    if images.dtype != torch.uint8:
        return images
    c = channels or images.shape[1]
    if images.shape[1] not in (1, c):
        raise ValueError(f"a batch of {images.shape[1]}-channel images cannot feed a {c}-channel model")
    std_t = torch.tensor(list(std)[:c], device=images.device).view(1, c, 1, 1)
    shift = -torch.tensor(list(mean)[:c], device=images.device).view(1, c, 1, 1) / std_t
    return torch.addcmul(shift, images.float(), 1.0 / (255.0 * std_t))  # one pass, broadcast over the channels


class _GreyFirst:
    """Runs `geometry` on the native channels and dtype (1 channel for grey slices, bytes for 8-bit ones), then sets
    the channel count and normalises (float32 output) or quantises (uint8 output, normalised later by
    `normalize_batch` on the training device)."""

    def __init__(self, geometry: Callable, mean: Sequence[float], std: Sequence[float], channels: int,
                 output: str = "float32") -> None:
        self.geometry, self.channels, self.output = geometry, channels, output
        self.normalize = v2.Normalize(list(mean)[:channels], list(std)[:channels])

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        x = self.geometry(native_tensor(pixels))
        if self.output == "uint8":
            return _byte_channels(x if x.dtype == torch.uint8 else to_uint8(x), self.channels)
        return self.normalize(_channels(unit_float(x), self.channels))


def mae_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  channels: int = 3, output: str = "float32") -> Callable[[np.ndarray], torch.Tensor]:
    """MAE: RandomResizedCrop(size, scale 0.2-1.0, bicubic), horizontal flip, normalise -> `[C, size, size]`."""
    geometry = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
    ])
    return _GreyFirst(geometry, mean, std, channels, output)


class _UnitRange:
    """Clamp to [0, 1]: bicubic resampling overshoots at edges, and the colour ops' HSV conversion turns a pixel with
    a maximum of 0 and a negative minimum into NaN (seen on an RGB ultrasound frame)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


def _view(size: int, scale: tuple, blur: float, colour: bool) -> v2.Compose:
    """One contrastive view before normalisation; grey inputs skip the colour-only steps (no-ops on grey)."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        unit_float,  # the colour steps in float
        _UnitRange(),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2 if colour else 0.0, 0.1 if colour else 0.0)], p=0.8),
        v2.RandomGrayscale(p=0.2) if colour else v2.Identity(),
        v2.RandomApply([v2.GaussianBlur(kernel_size=2 * (size // 20) + 1, sigma=(0.1, 2.0))], p=blur),
    ])


CROP_SCALE, SMALL_CROP_SCALE = (0.08, 1.0), (0.05, 0.14)


def view_specs(size: int, small_size: int, small_crops: int, crop_scale: Sequence[float] = CROP_SCALE,
               small_crop_scale: Sequence[float] = SMALL_CROP_SCALE) -> List[tuple]:
    """(size, area range, blur probability) of each contrastive view: two global views (blur p1.0 and p0.1, as in
    BYOL), then `small_crops` small ones (SwAV multi-crop, blur p0.5). The torch and DALI graphs both read this."""
    return [(size, tuple(crop_scale), 1.0), (size, tuple(crop_scale), 0.1)] + \
        [(small_size, tuple(small_crop_scale), 0.5)] * small_crops


def contrastive_transform(size: int = 224, small_size: int = 96, small_crops: int = 0,
                          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                          channels: int = 3, output: str = "float32", crop_scale: Sequence[float] = CROP_SCALE,
                          small_crop_scale: Sequence[float] = SMALL_CROP_SCALE
                          ) -> Callable[[np.ndarray], List[torch.Tensor]]:
    """The views of `view_specs`, each: random resized crop, flip, colour jitter p0.8 (brightness/contrast on grey),
    grayscale p0.2, Gaussian blur -> list of `[C, s, s]` tensors."""
    specs = view_specs(size, small_size, small_crops, crop_scale, small_crop_scale)
    grey = [_view(s, sc, b, colour=False) for s, sc, b in specs]
    rgb = [_view(s, sc, b, colour=True) for s, sc, b in specs]
    normalize = v2.Normalize(list(mean)[:channels], list(std)[:channels])

    def apply(pixels: np.ndarray) -> List[torch.Tensor]:
        x = native_tensor(pixels)
        views = [view(x).clamp(0.0, 1.0) for view in (grey if x.shape[0] == 1 else rgb)]
        if output == "uint8":
            return [_byte_channels(to_uint8(v), channels) for v in views]
        return [normalize(_channels(v, channels)) for v in views]

    return apply


def resize_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     channels: int = 3, output: str = "float32") -> Callable[[np.ndarray], torch.Tensor]:
    """No augmentation (evaluation, embedding): resize to `size` x `size` (bicubic), normalise."""
    return _GreyFirst(v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                      mean, std, channels, output)


def _output(cfg: "LoaderConfig") -> str:
    return "uint8" if cfg.batch_dtype == "uint8" else "float32"


# the registry of torch transforms by `loader.augment` name (the DALI graphs in `data.dali` are keyed the same way)
TRANSFORMS: Dict[str, Callable[["LoaderConfig"], Callable]] = {
    "mae": lambda cfg: mae_transform(cfg.image_size, channels=cfg.channels or 3, output=_output(cfg)),
    "contrastive": lambda cfg: contrastive_transform(cfg.image_size, cfg.small_size, cfg.small_crops or 0,
                                                     channels=cfg.channels or 3, output=_output(cfg),
                                                     crop_scale=cfg.crop_scale, small_crop_scale=cfg.small_crop_scale),
    "resize": lambda cfg: resize_transform(cfg.image_size, channels=cfg.channels or 3, output=_output(cfg)),
}
