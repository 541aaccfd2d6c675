"""The sharding service never loses or doubles data: a full disk, an S3 endpoint that goes down, two writers on one
output, a misspelled bucket, files readable as the umask says; failed attempts are never quarantined, and every
failure is one line on the terminal (the traceback goes to a log file the line names)."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from medscale.core.errors import StorageError
from medscale.core.storage import filesystem
from medscale.data.manifest import read_manifest
from medscale.data.service import run_sharding
from tests.conftest import make_corpus, needs_mount, one_line_error, shard_config
from tests.data.test_service import BAD_REASONS, check_exactly_once

ALL_KEPT = 5 + 10 + 24 + 12 + 780  # the test corpus: CT series, MR frames, NIfTI slices, PNG files, npz rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _cli(*args, env=None, timeout=300):
    env = dict(os.environ, **(env or {}))
    env.setdefault("MEDSCALE_LOG_DIR", tempfile.mkdtemp(prefix="medscale-logs-"))
    return subprocess.run([sys.executable, "-m", "medscale.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _inputs(corpus):
    return [f"{name}={path}" for name, path in corpus.items()]


def _quarantined_files(out):
    return {os.path.basename(r["path"]) for r in read_manifest(*filesystem(str(out))).to_pylist()
            if r["status"] == "quarantined"}


@needs_mount
@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "pool"])
def test_a_full_disk_stops_the_run_and_the_rerun_completes(corpus, tmp_path, executor):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(small)], check=True)
    try:
        out = small / "out"
        args = ["shard", *_inputs(corpus), "--output", str(out), "--shard-size", "40", "--executor", executor,
                "shard.progress=false"]
        line = one_line_error(_cli(*args))
        assert "No space left on device" in line and "rerun the same command" in line
        log = Path(line.rsplit("full traceback: ", 1)[1].rstrip(")"))
        assert log.exists() and "Traceback" in log.read_text()
        assert _quarantined_files(out) <= set(BAD_REASONS)  # a full disk quarantines no input
        subprocess.run(["mount", "-o", "remount,size=20m", str(small)], check=True)  # free space
        done = _cli(*args)
        assert done.returncode == 0, done.stderr
        table = check_exactly_once(out)
        assert sum(r["status"] == "kept" for r in table) == ALL_KEPT
        assert _quarantined_files(out) == set(BAD_REASONS)
    finally:
        subprocess.run(["umount", "-l", str(small)])


def _moto(port=None):
    from moto.server import ThreadedMotoServer

    from tests.conftest import _free_port

    port = port or _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    return server, port


@pytest.mark.slow
def test_s3_endpoint_down_mid_run_fails_loudly_and_the_rerun_completes(corpus, tmp_path):
    import s3fs

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server, port = _moto()
    options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("flaky")
    config = tmp_path / "s3.yaml"
    config.write_text(f"shard:\n  storage_options:\n    client_kwargs: {{endpoint_url: 'http://127.0.0.1:{port}'}}\n"
                      "    key: testing\n    secret: testing\n  retries: 1\n  progress: false\n")
    args = ["shard", *_inputs(corpus), "--output", "s3://flaky/out", "--shard-size", "10", "--executor", "local",
            "-c", str(config)]
    env = dict(os.environ, MEDSCALE_LOG_DIR=str(tmp_path / "logs"), AWS_MAX_ATTEMPTS="2")
    proc = subprocess.Popen([sys.executable, "-m", "medscale.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if fs.exists("flaky/out/manifest.parquet") and len(fs.ls("flaky/out/manifest.parquet")) >= 4:
            break
        time.sleep(0.05)
    server.stop()  # the endpoint goes away mid-run
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0, "the run finished before the endpoint went down; lower the shard size"
    line = one_line_error(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    assert "rerun the same command" in line
    server, _ = _moto(port)  # back up, with what it stored (moto keeps its state in this process)
    try:
        fs.invalidate_cache()
        quarantined = {r["path"].rsplit("/", 1)[-1] for r in read_manifest(fs, "flaky/out").to_pylist()
                       if r["status"] == "quarantined"}
        assert quarantined <= set(BAD_REASONS)  # no input quarantined for a failed attempt
        done = subprocess.run([sys.executable, "-m", "medscale.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        fs.invalidate_cache()
        table = read_manifest(fs, "flaky/out").to_pylist()
        kept = [r for r in table if r["status"] == "kept"]
        assert len(kept) == len({r["key"] for r in kept}) == ALL_KEPT
        tars = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("flaky/out") if p.endswith(".tar"))
        assert set(tars) == {r["shard"] for r in kept}  # no orphan shard, none missing
    finally:
        server.stop()


@pytest.mark.slow
def test_one_writer_per_output_and_force_never_overwrites(corpus, tmp_path):
    out = tmp_path / "out"
    first = [*_inputs({k: v for k, v in corpus.items() if k != "npz"})]
    many = tmp_path / "npz"
    many.mkdir()
    for i in range(8):  # long enough (6,240 samples in 1,248 commits) for the second run to meet the first
        shutil.copy(corpus["npz"] / "breastmnist_28.npz", many / f"breast{i}.npz")
    second = [f"npz={many}"]
    common = ["--output", str(out), "--shard-size", "5", "--executor", "local", "shard.progress=false"]
    env = dict(os.environ, MEDSCALE_LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.Popen([sys.executable, "-m", "medscale.cli", "shard", *second, *common],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "_lock.json").exists():
        time.sleep(0.02)
    busy = _cli("shard", *first, *common, env={"MEDSCALE_LOG_DIR": str(tmp_path / "logs")})
    line = one_line_error(busy)
    assert "being written by `medscale shard`" in line and f"pid {proc.pid}" in line and "--force" in line
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert not (out / "_lock.json").exists()  # released
    assert _cli("shard", *first, *common).returncode == 0  # now it may write: both runs' samples, once each
    table = check_exactly_once(out)
    assert sum(r["status"] == "kept" for r in table) == ALL_KEPT - 780 + 8 * 780


def test_a_stale_lock_of_a_dead_process_is_taken_over(corpus, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "_lock.json").write_text('{"holder": "medscale shard", "host": "%s", "pid": %s, "heartbeat": %f}'
                                    % (os.uname().nodename, dead.stdout.strip(), time.time()))
    summary = run_sharding(shard_config([f"xray={corpus['xray']}"], out))
    assert summary.slices == 12 and not (out / "_lock.json").exists()


def test_a_live_lock_is_an_error_and_force_breaks_it(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_lock.json").write_text('{"holder": "medscale dedup", "host": "elsewhere", "pid": 1, "heartbeat": %f}'
                                    % time.time())
    with pytest.raises(StorageError, match="being written by `medscale dedup` on elsewhere"):
        run_sharding(shard_config([f"xray={corpus['xray']}"], out))
    assert run_sharding(shard_config([f"xray={corpus['xray']}"], out), force=True).slices == 12


def test_the_commit_never_overwrites_a_shard_or_a_part(tmp_path):
    from medscale.core.storage import move, put_bytes_atomic

    fs, root = filesystem(str(tmp_path))
    put_bytes_atomic(fs, f"{root}/part-000000.parquet", b"first", overwrite=False)
    with pytest.raises(StorageError, match="never overwritten"):
        put_bytes_atomic(fs, f"{root}/part-000000.parquet", b"second", overwrite=False)
    (tmp_path / "staged.tar").write_bytes(b"staged")
    with pytest.raises(StorageError, match="never overwritten"):
        move(fs, f"{root}/staged.tar", f"{root}/part-000000.parquet", overwrite=False)
    assert (tmp_path / "part-000000.parquet").read_bytes() == b"first" and (tmp_path / "staged.tar").exists()


def test_s3_commit_is_conditional_and_a_missing_bucket_is_never_created(s3_server, tmp_path, corpus):
    import s3fs

    from medscale.core.storage import put_bytes_atomic

    fs = s3fs.S3FileSystem(**s3_server)
    put_bytes_atomic(fs, "medscale-test/cond/part-000000.parquet", b"first", overwrite=False)
    with pytest.raises(StorageError, match="never overwritten"):
        put_bytes_atomic(fs, "medscale-test/cond/part-000000.parquet", b"second", overwrite=False)
    assert fs.cat_file("medscale-test/cond/part-000000.parquet") == b"first"
    cfg = shard_config([f"xray={corpus['xray']}"], "s3://nobucket/corpus", storage_options=s3_server)
    with pytest.raises(StorageError, match="bucket 'nobucket'.*never creates buckets"):
        run_sharding(cfg)
    fs.invalidate_cache()
    assert not fs.exists("nobucket")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_files_are_readable_as_the_umask_says(corpus, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run_sharding(shard_config([f"xray={corpus['xray']}"], tmp_path / "out"))
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} == {".tar", ".idx", ".parquet", ".json"}  # shards, manifest, corpus.json
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(mode)}


def test_an_empty_input_is_an_error_and_a_misspelled_override_is_not_an_input(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(_cli("shard", str(tmp_path / "empty"), "--output", str(tmp_path / "out")))
    assert "no input files found" in line
    line = one_line_error(_cli("shard", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "shrad.bit_depth=16"))
    assert "'shrad' is not a config section" in line and "did you mean 'shard.bit_depth=16'" in line


def test_command_line_values_are_checked_and_named_as_such(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("shard:\n  bit_depth: 8\n")
    line = one_line_error(_cli("shard", str(tmp_path), "-o", str(tmp_path / "o"), "--shard-size", "0",
                                "-c", str(config)))
    assert "override 'shard.shard_size=0'" in line and str(config) not in line
    line = one_line_error(_cli("shard", str(tmp_path), "-o", str(tmp_path / "o"), "-c", str(config),
                                "shard.bit_depth=12"))
    assert "override 'shard.bit_depth=12'" in line


def test_against_takes_one_value_so_the_output_is_not_swallowed():
    from medscale.cli import build_parser

    args, _ = build_parser().parse_known_args(["dedup", "--against", "test=x.npz", "--against", "y", "OUT"])
    assert args.url == "OUT" and args.against == ["test=x.npz", "y"]


def test_a_rerun_with_nothing_to_do_starts_no_workers(corpus, tmp_path):
    out = tmp_path / "out"
    assert _cli("shard", f"xray={corpus['xray']}", "-o", str(out), "--executor", "local").returncode == 0
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    again = _cli("shard", f"xray={corpus['xray']}", "-o", str(out), "--executor", "ray",
                 env={"RAY_TMPDIR": str(ray_dir)})
    assert again.returncode == 0 and "slices 0" in again.stdout
    assert not any(ray_dir.iterdir())  # Ray never started


def test_dedup_takes_the_same_lock(corpus, tmp_path):
    from medscale.dedup.config import DedupConfig
    from medscale.dedup.service import run_dedup

    out = tmp_path / "out"
    run_sharding(shard_config([f"ct={corpus['ct']}"], out))
    (out / "_lock.json").write_text('{"holder": "medscale shard", "host": "elsewhere", "pid": 1, "heartbeat": %f}'
                                    % time.time())
    cfg = DedupConfig(executor="local", progress=False)
    with pytest.raises(StorageError, match="being written by `medscale shard`"):
        run_dedup(str(out), cfg)
    assert run_dedup(str(out), DedupConfig(executor="local", progress=False, dry_run=True)).samples == 15


def test_a_crafted_corpus_is_refused(corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medscale.core.errors import ShardFormatError
    from medscale.data.dataset import ShardDataset
    from medscale.data.index import ShardReader, load_index

    out = tmp_path / "out"
    run_sharding(shard_config([f"xray={corpus['xray']}"], out))
    index = load_index(str(out))
    reader = ShardReader(str(out))
    first, second = index.keys[0], index.keys[1]
    assert reader.read(index.shards[0], int(index.offsets[0]), int(index.lengths[0]), f"{first}.png")
    with pytest.raises(ShardFormatError, match="the tar header there names"):  # the index and the shard disagree
        reader.read(index.shards[0], int(index.offsets[0]), int(index.lengths[0]), f"{second}.png")
    reader.close()
    part = next((out / "manifest.parquet").glob("part-*.parquet"))
    table = pq.read_table(part)
    shards = ["../../etc/passwd.tar" if s else s for s in table["shard"].to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("shard"), "shard", pa.array(shards, pa.string())),
                   part)
    with pytest.raises(ShardFormatError, match="not a plain `NAME.tar` in the corpus root"):
        ShardDataset(str(out))


def test_a_removed_part_leaves_no_number_to_collide_with(corpus, tmp_path):
    out = tmp_path / "out"
    run_sharding(shard_config([f"xray={corpus['xray']}", f"mri={corpus['mri']}"], out, shard_size=5))
    parts = sorted((out / "manifest.parquet").glob("part-*.parquet"))
    assert len(parts) >= 3
    parts[1].unlink()  # what the unreadable-manifest error tells a user to do with a damaged part
    again = run_sharding(shard_config([f"xray={corpus['xray']}", f"mri={corpus['mri']}"], out, shard_size=5))
    assert again.slices > 0  # its inputs are redone into new parts, after the highest number
    check_exactly_once(out)
