"""Augmentation pipelines for the trainers, on float tensors so 16-bit slices keep their precision until the crop.

`to_tensor` turns a stored slice (`[H, W]` uint8/uint16 or `[H, W, 3]` uint8) into `[C, H, W]` float32 in [0, 1];
`mae_transform` is MAE's recipe; `contrastive_transform` returns two (or multi-crop) views as in SimCLR/MoCo/BYOL
and SwAV. The DALI pipeline (`medscale.data.dali`) implements the same recipes with DALI operators.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

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


def mae_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  channels: int = 3) -> Callable[[np.ndarray], torch.Tensor]:
    """MAE: RandomResizedCrop(size, scale 0.2-1.0, bicubic), horizontal flip, normalise -> `[C, size, size]`."""
    pipeline = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.Normalize(list(mean)[:channels], list(std)[:channels]),
    ])
    return lambda pixels: pipeline(to_tensor(pixels, channels))


def _view(size: int, scale: tuple, mean: Sequence[float], std: Sequence[float], channels: int,
          blur: float) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2 if channels == 3 else 0.0, 0.1 if channels == 3 else 0.0)],
                       p=0.8),
        v2.RandomGrayscale(p=0.2) if channels == 3 else v2.Identity(),
        v2.RandomApply([v2.GaussianBlur(kernel_size=2 * (size // 20) + 1, sigma=(0.1, 2.0))], p=blur),
        v2.Lambda(lambda x: x.clamp(0.0, 1.0)),
        v2.Normalize(list(mean)[:channels], list(std)[:channels]),
    ])


def contrastive_transform(size: int = 224, small_size: int = 96, small_crops: int = 0,
                          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                          channels: int = 3) -> Callable[[np.ndarray], List[torch.Tensor]]:
    """Two global views (crop 0.08-1.0, flip, colour jitter p0.8, grayscale p0.2, blur p1.0/p0.1 as in BYOL) plus
    `small_crops` small views (SwAV multi-crop: `small_size`, scale 0.05-0.14 of the area) -> list of tensors."""
    views = [_view(size, (0.08, 1.0), mean, std, channels, 1.0), _view(size, (0.08, 1.0), mean, std, channels, 0.1)]
    views += [_view(small_size, (0.05, 0.14), mean, std, channels, 0.5) for _ in range(small_crops)]

    def apply(pixels: np.ndarray) -> List[torch.Tensor]:
        x = to_tensor(pixels, channels)
        return [view(x) for view in views]

    return apply


def resize_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     channels: int = 3) -> Callable[[np.ndarray], torch.Tensor]:
    """No augmentation (evaluation, embedding): resize to `size` x `size` (bicubic), normalise."""
    pipeline = v2.Compose([v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                           v2.Normalize(list(mean)[:channels], list(std)[:channels])])
    return lambda pixels: pipeline(to_tensor(pixels, channels))
