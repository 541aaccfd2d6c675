"""The sharding service end to end: exactly-once, quarantine, rerun, incremental, 16-bit, Ray = in-process, S3."""

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from medscale.core.errors import ConfigError, StorageError
from medscale.core.storage import filesystem
from medscale.data.manifest import read_manifest
from medscale.data.service import run_sharding
from medscale.data.shards import iter_shard
from tests.conftest import make_corpus, shard_config

BAD_REASONS = {
    "truncated.dcm": "cannot decode DICOM pixels",
    "not_dicom.dcm": "unrecognised file type",
    "broken.nii.gz": "unreadable NIfTI",
    "corrupt.png": "corrupt or unsupported image",
    "empty.png": "zero-size file",
    "nopixels.dcm": "without pixel data",
}


def _inputs(sources):
    return [f"{name}={path}" for name, path in sources.items()]


def shard_contents(output):
    """{key: members} over every shard file in `output`, failing on a key seen twice."""
    fs, root = filesystem(str(output))
    seen = {}
    for path in sorted(fs.glob(root + "/*.tar")):
        with fs.open(path, "rb") as fh:
            for key, members in iter_shard(fh, path):
                assert key not in seen, f"{key} in two shards"
                seen[key] = (path.rsplit("/", 1)[-1], members)
    return seen


def check_exactly_once(output):
    """Every manifest sample is in exactly the shard the manifest names, and no shard holds anything else."""
    table = read_manifest(*filesystem(str(output))).to_pylist()
    kept = {r["key"]: r for r in table if r["status"] == "kept"}
    assert len(kept) == sum(r["status"] == "kept" for r in table), "duplicate keys in the manifest"
    contents = shard_contents(output)
    assert set(contents) == set(kept)
    for key, (shard, members) in contents.items():
        assert kept[key]["shard"] == shard
        assert json.loads(members["json"])["key"] == key
        assert len(members["png"]) == kept[key]["bytes"]
    return table


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_shards_every_source_and_quarantines_every_bad_kind(corpus, tmp_path):
    summary = run_sharding(shard_config(_inputs(corpus), tmp_path / "out", shard_size=50))
    table = check_exactly_once(tmp_path / "out")
    quarantined = {os.path.basename(r["path"]): r["reason"] for r in table if r["status"] == "quarantined"}
    assert set(quarantined) == set(BAD_REASONS)
    for name, fragment in BAD_REASONS.items():
        assert fragment in quarantined[name], (name, quarantined[name])
    kept = [r for r in table if r["status"] == "kept"]
    by_source = {s: sum(r["source"] == s for r in kept) for s in ("ct", "mri", "xray", "npz")}
    assert by_source == {"ct": 5 + 10, "mri": 24, "xray": 12, "npz": 780}
    assert summary.slices == len(kept) and summary.quarantined == len(BAD_REASONS)
    assert summary.volumes == 3 and summary.shards == len(list((tmp_path / "out").glob("*.tar")))
    # labels: npz labels and folder labels are not asked for here (labels_from_folders is off)
    assert all(r["label"] is not None for r in kept if r["source"] == "npz")
    # slices of a volume in anatomical order, keys carry the order
    ct = sorted((r for r in kept if r["source"] == "ct" and r["volume"] and r["position"] is not None),
                key=lambda r: r["slice"])
    assert [r["position"] for r in ct] == sorted(r["position"] for r in ct)
    # the manifest reads with plain pyarrow.dataset, and every tar has its index
    assert pads.dataset(str(tmp_path / "out" / "manifest.parquet")).count_rows() == len(table)
    for tar in (tmp_path / "out").glob("*.tar"):
        assert tar.with_suffix(".idx").exists()
    assert not (tmp_path / "out" / "_staging").exists()


def test_the_progress_bar_counts_the_slices_written(corpus, tmp_path, capsys):
    """Volumes' slice counts are estimates until read: the bar ends at the slices written, total and count."""
    summary = run_sharding(shard_config(_inputs(corpus), tmp_path / "out", shard_size=50, progress=True))
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{summary.slices}/{summary.slices} [" in last and "slice/s" in last, last


def test_rerun_does_nothing_and_new_inputs_extend(corpus, tmp_path):
    out = tmp_path / "out"
    first = {k: v for k, v in corpus.items() if k != "npz"}
    run_sharding(shard_config(_inputs(first), out, shard_size=50))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    rows_before = len(check_exactly_once(out))
    again = run_sharding(shard_config(_inputs(first), out, shard_size=50))
    assert again.inputs == 0 and again.slices == 0 and again.shards == 0 and again.quarantined == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before
    grown = run_sharding(shard_config(_inputs(corpus), out, shard_size=50))
    assert grown.inputs == 1 and grown.slices == 780  # only the new source is read
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert {k: after[k] for k in before} == before  # old shards untouched, new ones added
    assert len(check_exactly_once(out)) == rows_before + 780


def test_labels_from_folders(corpus, tmp_path):
    from medscale.data.config import SourceOptions

    cfg = shard_config([f"xray={corpus['xray']}"], tmp_path / "out",
                       sources={"xray": SourceOptions(labels_from_folders=True)})
    run_sharding(cfg)
    rows = read_manifest(*filesystem(str(tmp_path / "out"))).to_pylist()
    for r in rows:
        assert r["label_name"] in r["path"] and r["label"] == int(r["label_name"][-1])
    contents = shard_contents(tmp_path / "out")
    assert all(m["cls"] == str(next(r["label"] for r in rows if r["key"] == k)).encode()
               for k, (_, m) in contents.items())


def test_16bit_round_trip(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    img = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50)
    Image.fromarray(img).save(folder / "deep.png")
    run_sharding(shard_config([folder], tmp_path / "out", bit_depth=16))
    (key, (_, members)), = shard_contents(tmp_path / "out").items()
    back = np.asarray(Image.open(io.BytesIO(members["png"])))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, img)
    assert json.loads(members["json"])["bits"] == 16


def test_clear_errors_for_bad_arguments(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        run_sharding(shard_config([tmp_path / "missing"], tmp_path / "out"))
    with pytest.raises(ConfigError, match="output"):
        run_sharding(shard_config([tmp_path], None))


@pytest.mark.slow
def test_ray_path_equals_in_process_path(corpus, tmp_path, ray_local):
    run_sharding(shard_config(_inputs(corpus), tmp_path / "local", shard_size=50))
    run_sharding(shard_config(_inputs(corpus), tmp_path / "ray", shard_size=50, executor="ray"))

    def rows(out):
        table = read_manifest(*filesystem(str(out))).to_pylist()
        return sorted((r["key"] or "", r["status"], r["reason"] or "", r["bytes"] or 0, r["path"]) for r in table)

    assert rows(tmp_path / "local") == rows(tmp_path / "ray")
    a = {k: m for k, (_, m) in shard_contents(tmp_path / "local").items()}
    b = {k: m for k, (_, m) in shard_contents(tmp_path / "ray").items()}
    assert a == b


@pytest.mark.slow
def test_s3_output_and_input_through_moto(corpus, tmp_path, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    fs.put(str(corpus["xray"]), "medscale-test/in/xray", recursive=True)
    fs.put(str(corpus["npz"] / "breastmnist_28.npz"), "medscale-test/in/npz/breastmnist_28.npz")
    url = "s3://medscale-test/out"
    cfg = shard_config(["s3://medscale-test/in/xray", "s3://medscale-test/in/npz"], url, shard_size=300,
                       storage_options=s3_server)
    summary = run_sharding(cfg)
    assert summary.slices == 12 + 780 and summary.quarantined == 0
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("medscale-test/out"))
    tars = [n for n in names if n.endswith(".tar")]
    assert tars == [f"shard-{i:06d}.tar" for i in range(len(tars))]
    assert all(t[:-4] + ".idx" in names for t in tars)
    table = read_manifest(fs, "medscale-test/out").to_pylist()
    keys = set()
    for t in tars:
        with fs.open(f"medscale-test/out/{t}", "rb") as fh:
            keys |= {k for k, _ in iter_shard(fh, t)}
    assert keys == {r["key"] for r in table if r["status"] == "kept"} and len(keys) == 792
    assert run_sharding(cfg).slices == 0  # rerun on S3 does nothing


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_kill_minus_nine_then_resume_is_exactly_once(corpus, tmp_path, executor):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medscale.cli", "shard", *_inputs(corpus), "--output", str(out),
           "--shard-size", "20", "--executor", executor, "shard.progress=false", "shard.num_cpus=2"]
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: AF_UNIX paths <= 107
    rng = np.random.default_rng(7)
    kills = 0
    for attempt in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            parts = list((out / "manifest.parquet").glob("part-*")) if out.exists() else []
            if len(parts) >= 3 + 6 * attempt + int(rng.integers(0, 4)):
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
            kills += 1
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stdout.read().decode()[-3000:]
    assert kills >= 1, "the run finished before it could be killed; lower the shard size"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    table = check_exactly_once(out)
    kept = [r for r in table if r["status"] == "kept"]
    assert len(kept) == 5 + 10 + 24 + 12 + 780
    assert sorted(int(p.name[6:12]) for p in out.glob("*.tar")) == list(range(len(list(out.glob("*.tar")))))
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert "slices 0" in final.stdout  # a completed run rerun does nothing


def test_slice_stride_and_window_per_source(corpus, tmp_path):
    from medscale.data.config import SourceOptions

    cfg = shard_config([f"ct={corpus['ct']}"], tmp_path / "out",
                       sources={"ct": SourceOptions(slice_stride=2, window_center=40, window_width=400)})
    run_sharding(cfg)
    rows = [r for r in read_manifest(*filesystem(str(tmp_path / "out"))).to_pylist() if r["status"] == "kept"]
    by_volume = {}
    for r in rows:
        by_volume.setdefault(r["volume"], []).append(r["slice"])
    assert sorted(sorted(v) for v in by_volume.values()) == [[0, 2, 4], [0, 2, 4, 6, 8]]
