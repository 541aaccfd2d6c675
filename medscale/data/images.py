"""PNG/JPEG files: decode to grey or RGB pixels with their display range."""

from __future__ import annotations

from typing import IO, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from medscale.core.errors import InputError


def read_image(fh: IO[bytes], path: str) -> Tuple[np.ndarray, bool, float]:
    """(pixels `[H, W]` or `[H, W, 3]`, colour, display max 255/65535) of one PNG/JPEG file."""
    try:
        with Image.open(fh) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img)
                if arr.dtype != np.uint16:
                    arr = np.clip(arr, 0, 65535).astype(np.uint16)
                return arr, False, 65535.0
            if mode in ("L", "LA", "1"):
                return np.asarray(img.convert("L")), False, 255.0
            return np.asarray(img.convert("RGB")), True, 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: corrupt or unsupported image ({type(exc).__name__}: {exc})") from exc
