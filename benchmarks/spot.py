"""A spot interruption notice beside the scheduler's signal: seconds from each to `preempted.json` in object storage
(`medscale launch`, torchrun, 2 CPU ranks, the tiny MAE, the run directory on a moto S3 server on 127.0.0.1).

Two launches, each stopped a few steps after its first checkpoint:
  1. SIGUSR1 to `medscale launch` (the baseline: what a scheduler's warning costs);
  2. an interruption notice on a fake AWS metadata server (IMDSv2) on 127.0.0.1, which `cluster.spot_notice=aws`
     polls every `cluster.notice_interval_s` (5 s): the poll's wait comes on top.
Each launch then exits 75; the steps a relaunch would redo are none (the ranks save at the step they agree on).
Run: `python benchmarks/spot.py` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from record import recorded  # noqa: E402

from benchmarks.launch import ENV, corpus  # noqa: E402
from tests.cluster.conftest import MetadataServer  # noqa: E402
from tests.conftest import _free_port  # noqa: E402


def moto() -> tuple:
    """A moto S3 server process with bucket `bench`; (its Popen, the environment that reaches it)."""
    import s3fs

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
               AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    fs = s3fs.S3FileSystem(key="bench", secret="bench", client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
    for _ in range(100):
        try:
            fs.mkdir("bench")
            return server, env, fs
        except Exception:
            time.sleep(0.3)
    raise RuntimeError("moto did not start")


def stop_after_checkpoint(args: list, env: dict, fs, run: str, stop, local: Path) -> dict:
    """Launch (the node's copy of the run under `local`), call `stop(proc)` two steps after the first checkpoint is
    complete in S3, and time it to `preempted.json`; returns the seconds, the exit code, the step saved and the last
    step logged."""
    proc = subprocess.Popen([sys.executable, "-m", "medscale", "launch", *args, f"train.run_dir=s3://bench/{run}",
                             f"train.local_dir={local / run}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not fs.exists(f"bench/{run}/checkpoints/step-00000004/COMPLETE"):
        if proc.poll() is not None:
            raise RuntimeError(f"launch exited {proc.returncode} before its first checkpoint")
        time.sleep(0.2)
        fs.invalidate_cache()
    stop(proc)
    stopped = time.time()
    while not fs.exists(f"bench/{run}/preempted.json"):
        time.sleep(0.1)
        fs.invalidate_cache()
    seconds = time.time() - stopped
    code = proc.wait(timeout=300)
    record = json.loads(fs.cat_file(f"bench/{run}/preempted.json"))
    log = [json.loads(line) for line in fs.cat_file(f"bench/{run}/log.jsonl").decode().splitlines()]
    last = max(e["step"] for e in log if e["event"] == "scalars")
    return {"seconds": seconds, "code": code, "saved": record["step"], "last": last}


def main() -> None:
    server, env, fs = moto()
    metadata = MetadataServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = ["-c", str(REPO / "configs" / "mae-tiny.yaml"), f"train.data={corpus(Path(tmp))}",
                    "train.progress=false", "train.log_every=1", "loader.batch_size=16", "train.checkpoint_every=4",
                    "train.max_steps=400", "launch.procs_per_node=2"]
            warned = stop_after_checkpoint(args, env, fs, "signal", lambda proc: os.kill(proc.pid, signal.SIGUSR1),
                                            Path(tmp))
            noticed = stop_after_checkpoint([*args, "cluster.spot_notice=aws", f"cluster.metadata_url={metadata.url}"],
                                            env, fs, "notice", lambda proc: metadata.notice(), Path(tmp))
    finally:
        metadata.close()
        server.kill()
    print("\n| stop | seconds to preempted.json in S3 | ratio | exit code | step saved | last step logged | "
          "steps a relaunch redoes |\n|---|---|---|---|---|---|---|")
    for name, result in (("SIGUSR1 to medscale launch (baseline)", warned),
                         ("spot notice, 5-s polls (cluster.spot_notice=aws)", noticed)):
        print(f"| {name} | {result['seconds']:.1f} | {result['seconds'] / warned['seconds']:.2f} | {result['code']} | "
              f"{result['saved']} | {result['last']} | {result['last'] - result['saved']} |")


if __name__ == "__main__":
    with recorded("spot"):
        main()
