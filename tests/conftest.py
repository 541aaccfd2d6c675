"""Shared fixtures: real data shipped by installed packages, a local Ray, a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from medscale.data.config import ShardConfig
from medscale.demo import DEMO_DATA

PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"
PYDICOM_DATA = Path(__import__("data_store").__file__).parent / "data"
NIBABEL_DATA = Path(__import__("nibabel").__file__).parent / "tests" / "data"
MEDMNIST = DEMO_DATA / "medmnist"


def pillow_resize(batch, height: int, width: int):
    """`batch: [N, H, W]` uint8 resized one image at a time by Pillow's LANCZOS: what imagehash does."""
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(i).resize((width, height), Image.LANCZOS)) for i in batch])


def _native_built() -> bool:
    from medscale.hashing import native

    return native.available()


# for tests of the compiled kernel; CI also runs a test that fails when it was not built (MEDSCALE_REQUIRE_NATIVE)
needs_native = pytest.mark.skipif(not _native_built(), reason="the compiled kernel was not built (no C compiler)")


def shard_config(inputs, output, **kwargs) -> ShardConfig:
    """A quiet in-process config for tests."""
    kwargs.setdefault("executor", "local")
    kwargs.setdefault("progress", False)
    return ShardConfig(inputs=[str(i) for i in inputs], output=None if output is None else str(output), **kwargs)


@pytest.fixture(scope="session")
def loader_corpus(tmp_path_factory):
    """A small real sharded corpus for the loader tests (790 samples in 8 shards of 100: BreastMNIST + an MR
    series); tests that change it work on a copy."""
    from medscale.data.service import run_sharding

    root = tmp_path_factory.mktemp("loader")
    shutil.copy(MEDMNIST / "breastmnist_28.npz", root / "breast.npz")
    shutil.copy(PYDICOM_DATA / "emri_small.dcm", root / "mr.dcm")
    out = root / "out"
    run_sharding(shard_config([root / "breast.npz", root / "mr.dcm"], out, shard_size=100))
    return out


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 CPUs) for the whole session; its files in a temp dir."""
    ray = pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="ray-")
    os.environ["RAY_TMPDIR"] = tmp
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with bucket `medscale-test`; yields fsspec storage options."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("medscale-test")
    yield options
    server.stop()


@pytest.fixture
def s3_process(tmp_path):
    """A moto S3 server in a process of its own on 127.0.0.1 (so that a test can SIGSTOP it: connections are
    accepted, nothing answers), with bucket `medscale-test`; yields (storage options, its Popen)."""
    import s3fs

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "testing", "secret": "testing"}
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")  # for the commands a test starts
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    deadline = time.time() + 30
    while True:
        try:
            s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir("medscale-test")
            break
        except Exception:
            if time.time() > deadline:
                server.kill()
                raise
            time.sleep(0.3)
    yield options, server
    os.kill(server.pid, signal.SIGCONT)
    server.kill()
    server.wait()


def make_corpus(root: Path, bad: bool = True) -> dict:
    """A small real multi-source corpus (+ one file of every bad kind); returns {source: path}."""
    import numpy as np
    import pydicom
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    ct = root / "ct"
    shutil.copytree(PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N", ct / "series1")
    shutil.copy(PYDICOM_DATA / "emri_small.dcm", ct / "multiframe.dcm")
    nifti = root / "mri"
    nifti.mkdir()
    shutil.copy(NIBABEL_DATA / "example4d.nii.gz", nifti / "example4d.nii.gz")
    pngs = root / "xray"
    data = np.load(MEDMNIST / "breastmnist_28.npz")
    for label in (0, 1):
        (pngs / f"class{label}").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(data["val_images"][i]).save(pngs / f"class{int(data['val_labels'][i])}" / f"img{i}.png")
    npz = root / "npz"
    npz.mkdir()
    shutil.copy(MEDMNIST / "breastmnist_28.npz", npz / "breastmnist_28.npz")
    sources = {"ct": ct, "mri": nifti, "xray": pngs, "npz": npz}
    if bad:
        junk = root / "bad"
        junk.mkdir()
        raw = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
        (junk / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
        (junk / "not_dicom.dcm").write_text("hello, not a DICOM file")
        gz = (NIBABEL_DATA / "example4d.nii.gz").read_bytes()
        (junk / "broken.nii.gz").write_bytes(gz[: len(gz) // 3])
        png = (pngs / "class0").iterdir().__next__().read_bytes()
        (junk / "corrupt.png").write_bytes(png[:40] + b"\0" * 20)
        (junk / "empty.png").write_bytes(b"")
        ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
        del ds.PixelData
        ds.save_as(junk / "nopixels.dcm")
        sources["bad"] = junk
    return sources


def _can_mount() -> bool:
    target = tempfile.mkdtemp(prefix="mount-probe-")
    try:
        mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", target]
        ok = subprocess.run(mount, capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", target], check=True)
        return ok
    except OSError:
        return False
    finally:
        os.rmdir(target)


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root to mount a small tmpfs (CI runs as root)")


def one_line_error(proc) -> str:
    """The run failed with exit 2 and one `medscale: error:` line, no traceback; returns that line."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medscale: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]
