"""Dedup quality on real medical images: plant near-duplicates (resize, JPEG, noise, brightness/contrast,
16-to-8-bit, shift, crop, flip) among distinct real images and report precision and recall per transform.

Base images: BreastMNIST + PneumoniaMNIST and the middle slice of each real DICOM/NIfTI volume shipped by pydicom,
pydicom-data and nibabel, made distinct by a pixel criterion independent of the hashes (no two bases with 16x16
thumbnails correlating above 0.9; MedMNIST holds visually identical re-sampled copies). 300 bases are copied per
transform. A copy counts as found when the strategy puts it in its original's group. Precision counts every
duplicate decision (item -> exemplar): correct when both come from the same base image.

Run: `python benchmarks/dedup_quality.py`.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from record import recorded  # noqa: E402

from medscale.core.executor import LocalExecutor  # noqa: E402
from medscale.dedup.lsh import brute_force_pairs, verified  # noqa: E402
from medscale.dedup.minhash import signatures  # noqa: E402
from medscale.dedup.strategies import Corpus, create_strategy  # noqa: E402
from medscale.demo import DEMO_DATA  # noqa: E402
from medscale.hashing.hashes import hash_images, to_8bit  # noqa: E402
from medscale.hashing.shingles import codes_of  # noqa: E402

PER_TRANSFORM = 300


def base_images() -> list:
    import nibabel
    import pydicom

    images = []
    for name in ("breastmnist_28.npz", "pneumoniamnist_28.npz"):
        data = np.load(DEMO_DATA / "medmnist" / name)
        for split in ("train", "val", "test"):
            images.extend(data[f"{split}_images"])
    seen, unique = set(), []
    for img in images:
        digest = img.tobytes()
        if digest not in seen:
            seen.add(digest)
            unique.append(np.asarray(img, np.uint8))
    pydicom_dir = Path(pydicom.__file__).parent / "data" / "test_files"
    data_store = Path(__import__("data_store").__file__).parent / "data"
    volumes = []
    for path in [data_store / "emri_small.dcm", pydicom_dir / "MR_small.dcm", pydicom_dir / "CT_small.dcm"]:
        volumes.append(pydicom.dcmread(path).pixel_array)
    nib_dir = Path(nibabel.__file__).parent / "tests" / "data"
    for name in ("example4d.nii.gz", "anatomical.nii"):
        v = np.asarray(nibabel.load(nib_dir / name).dataobj)
        volumes.append(v[..., v.shape[2] // 2] if v.ndim == 3 else v[..., v.shape[2] // 2, 0])
    for v in volumes:
        plane = v[v.shape[0] // 2] if v.ndim == 3 and v.shape[0] < v.shape[-1] else v
        plane = plane.astype(np.float64)
        unique.append(np.rint(255 * (plane - plane.min()) / max(np.ptp(plane), 1e-9)).astype(np.uint8))
    return unique


def thumbnails(images: list, size: int = 16) -> np.ndarray:
    """`[N, size*size]` zero-mean unit-norm thumbnails (box filter): a pixel-level similarity independent of hashes."""
    t = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BOX), np.float32).reshape(-1)
                  for i in images])
    t -= t.mean(axis=1, keepdims=True)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6)


def distinct(images: list, max_corr: float = 0.9) -> list:
    """Drop images whose 16x16 thumbnail correlates above `max_corr` with an earlier kept one: MedMNIST holds
    visually identical images (re-sampled copies, mean absolute difference ~3 grey levels) that would otherwise
    count as false positives."""
    t = thumbnails(images)
    keep = []
    kept_t = np.zeros((0, t.shape[1]), np.float32)
    for start in range(0, len(images), 512):
        block = t[start:start + 512]
        prior = (block @ kept_t.T).max(axis=1) if len(kept_t) else np.full(len(block), -1.0)
        for i in range(len(block)):
            own = block[i] @ block[[k - start for k in keep if k >= start]].T if keep and keep[-1] >= start else []
            if prior[i] <= max_corr and (len(own) == 0 or np.max(own) <= max_corr):
                keep.append(start + i)
        kept_t = t[keep]
    return [images[i] for i in keep]


def _jpeg(img, quality=75):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _resize(img, factor):
    h, w = img.shape
    return np.asarray(Image.fromarray(img).resize((max(8, round(w * factor)), max(8, round(h * factor))),
                                                  Image.BICUBIC))


def _crop(img, frac=0.08):
    h, w = img.shape
    dy, dx = max(1, round(h * frac)), max(1, round(w * frac))
    return np.asarray(Image.fromarray(img[dy:h - dy, dx:w - dx]).resize((w, h), Image.BICUBIC))


TRANSFORMS = {
    "resize x2.3": lambda img, rng: _resize(img, 2.3),
    "JPEG q75": lambda img, rng: _jpeg(img),
    "noise sigma 5": lambda img, rng: np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8),
    "brightness/contrast": lambda img, rng: np.clip(img * 1.1 + 10, 0, 255).astype(np.uint8),
    "16-to-8-bit": lambda img, rng: to_8bit(img.astype(np.uint16) * 257 + rng.integers(0, 257, img.shape,
                                                                                         dtype=np.uint16)),
    "shift 2 px": lambda img, rng: np.pad(img, ((2, 0), (2, 0)), mode="edge")[:img.shape[0], :img.shape[1]],
    "crop 8%": lambda img, rng: _crop(img),
    "flip": lambda img, rng: img[:, ::-1].copy(),
}


def pixel_embedding(images: list) -> np.ndarray:
    """A weights-free stand-in embedding: 16x16 thumbnail averaged with its mirror, zero-mean (flip-invariant)."""
    out = []
    for img in images:
        t = np.asarray(Image.fromarray(img).resize((16, 16), Image.BILINEAR), np.float32)
        t = t + t[:, ::-1]
        out.append((t - t.mean()).reshape(-1))
    return np.stack(out)


def main() -> None:
    rng = np.random.default_rng(0)
    raw = base_images()
    bases = distinct(raw)
    images, origin, kind = list(bases), list(range(len(bases))), ["base"] * len(bases)
    for name, fn in TRANSFORMS.items():
        for b in rng.choice(len(bases), PER_TRANSFORM, replace=False):
            images.append(fn(bases[b], rng))
            origin.append(int(b))
            kind.append(name)
    origin, kind = np.array(origin), np.array(kind)
    hashes = hash_images(images)
    n = len(images)
    print(f"{len(raw)} real images, {len(bases)} distinct (16x16 thumbnail correlation <= 0.9), "
          f"{n - len(bases)} planted copies ({PER_TRANSFORM} per transform)\n")
    strategies = {f"hash-global {h}<=6": ("hash-global", {"hash_name": h, "threshold": 6}) for h in hashes}
    strategies["hash-global phash<=4 verify dhash+ahash<=16"] = (
        "hash-global", {"hash_name": "phash", "threshold": 4, "verify": "dhash+ahash<=16"})
    strategies["embedding (pixel stand-in) eps 0.02"] = ("embedding", {"eps": 0.02})
    strategies["minhash-global jaccard>=0.4"] = ("minhash-global", {"jaccard": 0.4})
    embeddings = pixel_embedding(images)
    start = time.perf_counter()
    sigs = signatures(codes_of(images), 128)
    print(f"local codes + MinHash of {n} images: {time.perf_counter() - start:.1f} s\n")
    results = {}
    for label, (name, params) in strategies.items():
        corpus = Corpus(keys=np.arange(n).astype(str).astype(object),
                        hashes=hashes[params.get("hash_name", "dhash")], volumes=np.array([None] * n, dtype=object),
                        slices=np.full(n, -1), embeddings=embeddings,
                        extra=np.stack([hashes["dhash"], hashes["ahash"]], axis=1), signatures=sigs)
        exemplar, _ = create_strategy(name, **params).reduce(corpus, LocalExecutor())
        results[label] = exemplar
    header = "| transform | " + " | ".join(f"{s}: recall / precision" for s in results) + " |"
    print(header)
    print("|---" * (len(results) + 1) + "|")
    for t in list(TRANSFORMS) + ["all (incl. false merges of distinct bases)"]:
        cells = []
        for exemplar in results.values():
            dup = exemplar != np.arange(n)
            correct = origin[exemplar] == origin  # a decision i -> exemplar is right when both share a base
            grouped = exemplar == exemplar[origin]  # a copy is found when it sits in its original's group
            if t in TRANSFORMS:
                idx = np.flatnonzero(kind == t)
                recall = grouped[idx].mean()
                decided = idx[dup[idx]]
                precision = correct[decided].mean() if len(decided) else 1.0
            else:
                decided = np.flatnonzero(dup)
                recall = grouped[kind != "base"].mean()
                precision = correct[decided].mean() if len(decided) else 1.0
            cells.append(f"{recall:.3f} / {precision:.3f}")
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("\nPair level (exact search, no grouping): pairs within k, their precision, recall of copy-original pairs")
    print("| hash | k | pairs | precision | " + " | ".join(f"recall {t}" for t in TRANSFORMS) + " |")
    print("|---" * (4 + len(TRANSFORMS)) + "|")
    for name, values in hashes.items():
        pairs = brute_force_pairs(values, 8)
        for k in (0, 2, 4, 6, 8):
            p = pairs[pairs[:, 2] <= k]
            found = set((p[:, 0] * n + p[:, 1]).tolist())
            precision = (origin[p[:, 0]] == origin[p[:, 1]]).mean() if len(p) else 1.0
            recalls = []
            for t in TRANSFORMS:
                copies = np.flatnonzero(kind == t)
                recalls.append(np.mean([min(c, origin[c]) * n + max(c, origin[c]) in found for c in copies]))
            print(f"| {name} | {k} | {len(p)} | {precision:.3f} | " + " | ".join(f"{r:.3f}" for r in recalls) + " |")
    extra = np.stack([hashes["dhash"], hashes["ahash"]], axis=1)
    pairs = brute_force_pairs(hashes["phash"], 4)
    p = verified(pairs, extra, 16)
    found = set((p[:, 0] * n + p[:, 1]).tolist())
    precision = (origin[p[:, 0]] == origin[p[:, 1]]).mean() if len(p) else 1.0
    recalls = [np.mean([min(c, origin[c]) * n + max(c, origin[c]) in found for c in np.flatnonzero(kind == t)])
               for t in TRANSFORMS]
    print(f"| phash, verify dhash+ahash<=16 | 4 | {len(p)} | {precision:.3f} | "
          + " | ".join(f"{r:.3f}" for r in recalls) + " |")


if __name__ == "__main__":
    with recorded("dedup_quality"):
        main()
