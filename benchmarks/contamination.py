"""The contamination check's default rule on real data: what it flags of a test split against a corpus that holds
only the train split, and how many planted copies of the test images (resized to 56 px, as a re-export would) it
finds, beside the reduction's Hash-6 rule as the baseline.

A flagged test image is a true near-copy when some train image matches it by a criterion independent of the hashes
(pixel correlation >= 0.95 at 28 px); otherwise it is an unrelated image flagged, which a safe rule never does.
MedMNIST's own splits hold true near-copies (BreastMNIST: about a fifth of the test split), so "flagged" alone
overstates the harm of a rule; the table shows both.

Run: `python benchmarks/contamination.py` (BreastMNIST and PneumoniaMNIST, 28 px; about a minute).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from record import recorded  # noqa: E402

from medscale.data.config import ShardConfig  # noqa: E402
from medscale.data.service import run_sharding  # noqa: E402
from medscale.dedup.config import DedupConfig  # noqa: E402
from medscale.dedup.contamination import run_contamination  # noqa: E402
from medscale.demo import DEMO_DATA  # noqa: E402

COPY_SIZE = 56
RULES = {"default (dhash<=3 and ahash+phash<=6)": {},
         "Hash-6 (dhash<=6, the reduction's)": {"against_threshold": 6, "against_verify": None}}


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """`images: [N, H, W]` uint8 resized to `size` px (bicubic, as image tools re-export)."""
    return np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BICUBIC)) for i in images])


NEAR_COPY = 0.95  # pixel correlation at which two 28-px images are the same picture


def flagged(corpus: Path, test: Path, rule: dict) -> set:
    """Indices of `test`'s images the check flags against `corpus` under `rule`."""
    cfg = dataclasses.replace(DedupConfig(executor="local", progress=False, dry_run=True), against=[str(test)],
                              **rule)
    summary = run_contamination(str(corpus), cfg)
    return {int(m["image"].rsplit("[", 1)[1].rstrip("]")) for s in summary.sets for m in s["matched"]}


def near_copies(test: np.ndarray, train: np.ndarray) -> set:
    """Indices of test images with a train image of pixel correlation >= NEAR_COPY (the hash-free criterion)."""
    def standard(x):
        x = x.reshape(len(x), -1).astype(np.float64)
        return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-9)
    best = (standard(test) @ standard(train).T / test[0].size).max(axis=1)
    return set(np.flatnonzero(best >= NEAR_COPY).tolist())


def measure(name: str, root: Path) -> list:
    """(set, rule, flagged unrelated, copies found) rows for one MedMNIST set."""
    data = np.load(DEMO_DATA / "medmnist" / f"{name}_28.npz")
    train, test = data["train_images"], data["test_images"]
    np.savez(root / f"{name}-train.npz", train_images=train, train_labels=data["train_labels"])
    np.savez(root / f"{name}-test.npz", test_images=test, test_labels=data["test_labels"])
    np.savez(root / f"{name}-copies.npz", train_images=resized(test, COPY_SIZE), train_labels=data["test_labels"])
    quiet = {"executor": "local", "progress": False}
    run_sharding(ShardConfig(inputs=[str(root / f"{name}-train.npz")], output=str(root / f"{name}-clean"), **quiet))
    run_sharding(ShardConfig(inputs=[str(root / f"{name}-train.npz"), str(root / f"{name}-copies.npz")],
                             output=str(root / f"{name}-planted"), **quiet))
    copies = near_copies(test, train)
    rows = []
    for rule, options in RULES.items():
        hits = flagged(root / f"{name}-clean", root / f"{name}-test.npz", options)
        found = flagged(root / f"{name}-planted", root / f"{name}-test.npz", options)
        rows.append((name, rule, len(test), len(copies), len(hits & copies), len(hits - copies), len(found)))
    return rows


def main() -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in ("breastmnist", "pneumoniamnist") for r in measure(name, Path(tmp))]
    print(f"Corpus = train split only: near-copies (pixel correlation >= {NEAR_COPY}) flagged, unrelated images "
          f"flagged; corpus = train + the test images resized to {COPY_SIZE} px: copies found.\n")
    print("| set | rule | test images | near-copies in train | near-copies flagged | unrelated flagged | "
          "planted copies found |")
    print("|---|---|---|---|---|---|---|")
    for name, rule, n, copies, true_hits, false_hits, found in rows:
        print(f"| {name} | {rule} | {n} | {copies} | {true_hits} | {false_hits} ({100 * false_hits / n:.1f}%) | "
              f"{found} ({100 * found / n:.1f}%) |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    with recorded("contamination"):
        main()
