"""Acquisition-like corruptions after MedMNIST-C (Di Salvo et al., 2024), as pure functions on uint8 images, to make
a target domain offline: the test split under one corruption family (the `dann` task's target).

Parameters at severities 1..5, from MedMNIST-C's tables for PneumoniaMNIST: gaussian noise sigma 0.04..0.08
(on [0, 1]), contrast down x0.9..0.4 around the image mean, brightness down x0.9..0.5, gamma up 1.1..1.6.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

SEVERITIES = {
    "gaussian_noise": (0.04, 0.05, 0.06, 0.07, 0.08),
    "contrast_down": (0.9, 0.75, 0.6, 0.5, 0.4),
    "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
    "gamma_up": (1.1, 1.2, 1.3, 1.45, 1.6),
}


def _noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, x.shape)


def _contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    return (x - mean) * factor + mean


def _brightness(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return x * factor


def _gamma(x: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    return np.power(x, gamma)


CORRUPTIONS: Dict[str, Callable] = {"gaussian_noise": _noise, "contrast_down": _contrast,
                                    "brightness_down": _brightness, "gamma_up": _gamma}


def corrupt(images: np.ndarray, family: str, severity: int, seed: int = 0) -> np.ndarray:
    """`images` (uint8 `[N, H, W(, C)]`) under `family` at `severity` (1..5), uint8 again; deterministic in `seed`."""
    if family not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {family!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity {severity}: expected 1..5")
    x = images.astype(np.float64) / 255.0
    out = CORRUPTIONS[family](x, SEVERITIES[family][severity - 1], np.random.default_rng(seed))
    return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def corrupt_npz(source: str, target: str, family: str, severity: int, seed: int = 0) -> None:
    """A MedMNIST npz with every split's images corrupted (labels unchanged)."""
    with np.load(source) as data:
        arrays = {k: (corrupt(v, family, severity, seed + i) if k.endswith("images") else v)
                  for i, (k, v) in enumerate(data.items())}
    np.savez(target, **arrays)
