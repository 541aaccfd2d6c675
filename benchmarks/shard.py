"""Sharding throughput: medscale (executor auto, and Ray) vs a plain one-process loop (PIL/pydicom/nibabel + tarfile).

Builds a corpus of >= 10,000 real slices (MedMNIST npz, MedMNIST images resized to PNG files, real DICOM and
NIfTI files copied), runs the baseline and medscale on it in this process, and prints images/s, the ratio,
and the peak memory of medscale's whole process tree (driver + Ray). Run: `python benchmarks/shard.py`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pydicom
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from record import recorded  # noqa: E402

from medscale.core.executor import choose_executor  # noqa: E402
from medscale.data.config import ShardConfig  # noqa: E402
from medscale.data.service import SAMPLE_COST_S, run_sharding  # noqa: E402
from medscale.demo import DEMO_DATA  # noqa: E402

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
LEVEL = 1  # PNG compression level for both sides


def build_corpus(root: Path, png_files: int, dicom_copies: int, nifti_copies: int) -> dict:
    """Real slices in every input kind; returns {source: folder}."""
    import data_store

    store = Path(data_store.__file__).parent / "data"
    sources = {}
    sources["npz"] = root / "npz"
    sources["npz"].mkdir(parents=True)
    for p in (DEMO_DATA / "medmnist").glob("*.npz"):
        shutil.copy(p, sources["npz"] / p.name)
    sources["png"] = root / "png"
    sources["png"].mkdir()
    images = np.load(DEMO_DATA / "medmnist" / "pneumoniamnist_28.npz")["train_images"]
    for i in range(png_files):
        Image.fromarray(images[i % len(images)]).resize((224, 224), Image.BICUBIC).save(
            sources["png"] / f"{i:05d}.png", compress_level=LEVEL)
    sources["dicom"] = root / "dicom"
    sources["dicom"].mkdir()
    for i in range(dicom_copies):  # distinct series: fresh SeriesInstanceUID per copy
        for name in ("emri_small.dcm",):
            ds = pydicom.dcmread(store / name)
            ds.SeriesInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(sources["dicom"] / f"{i:04d}_{name}")
        ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(sources["dicom"] / f"{i:04d}_ct.dcm")
    sources["nifti"] = root / "nifti"
    sources["nifti"].mkdir()
    for i in range(nifti_copies):
        shutil.copy(NIBABEL_DATA / "example4d.nii.gz", sources["nifti"] / f"{i:04d}.nii.gz")
    return sources


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=LEVEL)
    return buf.getvalue()


def _minmax8(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    lo, hi = x.min(), x.max()
    return np.zeros(x.shape, np.uint8) if hi <= lo else np.rint((x - lo) / (hi - lo) * 255).astype(np.uint8)


def baseline(sources: dict, out: Path) -> int:
    """One Python loop: decode each input with PIL/pydicom/nibabel, min-max, PNG, one tar with tarfile."""
    n = 0
    with tarfile.open(out, "w") as tar:
        def add(key: str, arr: np.ndarray) -> None:
            nonlocal n
            data = _png(arr)
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            n += 1

        for p in sorted(sources["npz"].glob("*.npz")):
            z = np.load(p)
            for split in ("train", "val", "test"):
                for i, img in enumerate(z[f"{split}_images"]):
                    add(f"{p.stem}_{split}_{i}", img)
        for p in sorted(sources["png"].iterdir()):
            add(p.stem, np.asarray(Image.open(p).convert("L")))
        for p in sorted(sources["dicom"].iterdir()):
            ds = pydicom.dcmread(p)
            arr = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
                ds.get("RescaleIntercept", 0))
            for j, frame in enumerate(arr.reshape((-1,) + arr.shape[-2:])):
                add(f"{p.stem}_{j}", _minmax8(frame))
        for p in sorted(sources["nifti"].iterdir()):
            vol = np.asarray(nib.as_closest_canonical(nib.load(p)).dataobj[..., 0])
            for j in range(vol.shape[2]):
                add(f"{p.stem}_{j}", _minmax8(np.rot90(vol[:, :, j])))
    return n


class PeakRSS:
    """Peak summed RSS of this process and all its descendants (driver + Ray processes), sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--png-files", type=int, default=2000)
    parser.add_argument("--dicom-copies", type=int, default=100, help="each copy: 10 MR frames + 1 CT slice")
    parser.add_argument("--nifti-copies", type=int, default=25, help="each copy: 24 slices")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-shard-", dir="/tmp") as tmp:
        root = Path(tmp)
        sources = build_corpus(root / "corpus", args.png_files, args.dicom_copies, args.nifti_copies)
        inputs = [f"{k}={v}" for k, v in sources.items()]

        t = time.perf_counter()
        n_base = baseline(sources, root / "baseline.tar")
        base_s = time.perf_counter() - t

        t = time.perf_counter()
        with PeakRSS() as auto_mem:  # what a one-machine user runs: `executor: auto`, nothing started before
            auto = run_sharding(ShardConfig(inputs=inputs, output=str(root / "auto"), progress=False,
                                            png_compress_level=LEVEL))
        auto_s = time.perf_counter() - t
        chosen = choose_executor("auto", None, auto.slices * SAMPLE_COST_S, args.cpus)

        t = time.perf_counter()
        with PeakRSS() as cold_mem:
            ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False,
                     _temp_dir=str(root / "ray"))
            ray_start = time.perf_counter() - t
            summary = run_sharding(ShardConfig(inputs=inputs, output=str(root / "out"), progress=False,
                                               png_compress_level=LEVEL, executor="ray"))
        cold_s = time.perf_counter() - t
        with PeakRSS() as warm_mem:  # the service on a cluster that is already up
            t = time.perf_counter()
            warm = run_sharding(ShardConfig(inputs=inputs, output=str(root / "out2"), progress=False,
                                            png_compress_level=LEVEL, executor="ray"))
            warm_s = time.perf_counter() - t
        ray.shutdown()

    rows = [
        ("baseline: one loop, PIL/pydicom/nibabel + tarfile", n_base, base_s, None),
        (f"medscale shard, executor auto (chose {chosen}), cold", auto.slices, auto_s, auto_mem.peak),
        (f"medscale shard, Ray warm ({args.cpus} CPUs)", warm.slices, warm_s, warm_mem.peak),
        (f"medscale shard, Ray incl. its start ({ray_start:.1f} s)", summary.slices, cold_s, cold_mem.peak),
    ]
    base_rate = n_base / base_s
    print(f"\ncorpus: {n_base} real slices (npz, PNG files, DICOM, NIfTI); PNG level {LEVEL}\n")
    print("| run | slices | seconds | images/s | vs baseline | peak RSS (process tree) |")
    print("|---|---|---|---|---|---|")
    for name, n, s, mem in rows:
        mem_txt = f"{mem / 2**30:.2f} GiB" if mem else "-"
        print(f"| {name} | {n} | {s:.1f} | {n / s:.0f} | {n / s / base_rate:.2f}x | {mem_txt} |")


if __name__ == "__main__":
    with recorded("shard"):
        main()
