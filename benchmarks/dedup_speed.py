"""Hashing speed: medscale's batched aHash/dHash/pHash vs `imagehash` called per image, on the same decoded images.

Run: `python benchmarks/dedup_speed.py`. (The global-search part of issue 3's benchmark is not built yet.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medscale.dedup.hashes import average_hash, dhash, phash  # noqa: E402
from medscale.demo import DEMO_DATA  # noqa: E402


def main() -> None:
    base = np.load(DEMO_DATA / "medmnist" / "pneumoniamnist_28.npz")["train_images"]
    batches = {
        "28 px (MedMNIST)": base[:4000],
        "224 px (MedMNIST resized)": np.stack([np.asarray(Image.fromarray(i).resize((224, 224), Image.BICUBIC))
                                               for i in base[:1000]]),
    }
    print("| images | hash | imagehash per image (img/s) | medscale batched (img/s) | speed-up |")
    print("|---|---|---|---|---|")
    for label, images in batches.items():
        pil = [Image.fromarray(i) for i in images]  # decoded once, outside both timings
        for ours, theirs in [(average_hash, imagehash.average_hash), (dhash, imagehash.dhash),
                             (phash, imagehash.phash)]:
            theirs(pil[0]), ours(images[:8])  # warm both (imports, cached coefficient matrices)
            t = time.perf_counter()
            ref = [theirs(p) for p in pil]
            base_s = time.perf_counter() - t
            t = time.perf_counter()
            got = np.concatenate([ours(images[i:i + 512]) for i in range(0, len(images), 512)])
            ours_s = time.perf_counter() - t
            assert [bytes(h).hex() for h in got] == [str(r) for r in ref]  # same bits, or the race means nothing
            n = len(images)
            print(f"| {label} | {ours.__name__} | {n / base_s:.0f} | {n / ours_s:.0f} | {base_s / ours_s:.1f}x |")


if __name__ == "__main__":
    main()
