"""Shard writer/reader round trips: plain tarfile, webdataset, DALI's reader with our .idx, name validation."""

import io
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from medscale.core.errors import ShardFormatError
from medscale.data.shards import ShardWriter, check_member_name, iter_shard


def _write(tmp_path, n=25, max_count=10):
    done = []

    def on_shard(info):
        dest = tmp_path / f"s-{len(done):06d}.tar"
        shutil.move(info.local_path, dest)
        (tmp_path / f"s-{len(done):06d}.idx").write_bytes(info.idx_bytes)
        done.append((dest, info))

    writer = ShardWriter(on_shard, max_count=max_count, max_bytes=1 << 30, tmp_dir=str(tmp_path))
    rng = np.random.default_rng(0)
    samples = {}
    for i in range(n):
        members = {"png": rng.bytes(int(rng.integers(1, 3000))), "json": b'{"i": %d}' % i}
        if i % 2:
            members["cls"] = str(i % 3).encode()
        samples[f"k{i:04d}"] = members
        writer.write(f"k{i:04d}", members)
    writer.close()
    return done, samples


def test_cut_by_count_and_round_trip_with_tarfile(tmp_path):
    done, samples = _write(tmp_path)
    assert [len(info.keys) for _, info in done] == [10, 10, 5]
    seen = {}
    for path, info in done:
        with tarfile.open(path) as tar:  # plain tarfile reads it
            names = tar.getnames()
        assert len(names) == sum(len(samples[k]) for k in info.keys)
        with open(path, "rb") as fh:
            seen.update(iter_shard(fh, str(path)))
        assert info.size == path.stat().st_size
    assert seen == samples


def test_cut_by_bytes(tmp_path):
    done = []
    writer = ShardWriter(lambda info: done.append(info), max_count=1000, max_bytes=4096, tmp_dir=str(tmp_path))
    for i in range(10):
        writer.write(f"k{i}", {"png": b"x" * 3000})
    writer.close()
    assert len(done) == 10 // 2 and all(len(d.keys) == 2 for d in done)


def test_idx_matches_dalis_wds2idx(tmp_path):
    done, _ = _write(tmp_path, n=12, max_count=100)
    path, info = done[0]
    wds2idx = shutil.which("wds2idx") or str(__import__("sys").prefix + "/bin/wds2idx")
    subprocess.run([wds2idx, str(path), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert info.idx_bytes.decode().split() == (tmp_path / "ref.idx").read_text().split()


def test_webdataset_library_reads_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    done, samples = _write(tmp_path)
    urls = [str(p) for p, _ in done]
    got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert set(got) == set(samples)
    assert got["k0001"]["cls"] == samples["k0001"]["cls"]


def test_dali_cpu_reader_with_written_index(tmp_path):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    done, samples = _write(tmp_path, n=12, max_count=5)
    paths = [str(p) for p, _ in done]
    indices = [str(p)[:-4] + ".idx" for p, _ in done]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        data, meta = fn.readers.webdataset(paths=paths, index_paths=indices, ext=["png", "json"],
                                           missing_component_behavior="error", name="Reader")
        return data, meta

    p = pipe()
    p.build()
    size = p.reader_meta("Reader")["epoch_size"]
    assert size == len(samples)
    got = []
    for _ in range((size + 3) // 4):
        data, meta = p.run()
        for i in range(len(meta)):
            got.append((bytes(np.array(meta.at(i))), bytes(np.array(data.at(i)))))
    got = got[:size]
    expected = {(v["json"], v["png"]) for v in samples.values()}
    assert set(got) == expected


@pytest.mark.parametrize("name", ["../evil.png", "/abs.png", "dir/x.png", "a b.png", "noext", "k.PNG"])
def test_unsafe_member_names_rejected(name):
    with pytest.raises(ShardFormatError):
        check_member_name(name)


def test_reader_rejects_traversal_member(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/x.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    with pytest.raises(ShardFormatError, match="unsafe"):
        list(iter_shard(buf))


def test_ustar_header_matches_tarfile():
    from medscale.data.shards import ustar_header

    for name, size in [("abc_00001.png", 12345), ("k.json", 0), ("x" * 90 + ".cls", 10**9)]:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o444, 0, "medscale", "medscale"
        assert ustar_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT)
