"""Checks before a launch starts anything, each a one-line error naming the fix: the rendezvous endpoint, the
GPUs, the run directory, the corpus, the trainer's own config checks."""

from __future__ import annotations

import errno
import socket
import time
import uuid

from medscale.core.errors import ConfigError, StorageError
from medscale.core.faults import describe
from medscale.core.storage import filesystem, is_local, join
from medscale.data.config import LoaderConfig
from medscale.data.manifest import kept_digest
from medscale.launcher.config import LaunchConfig
from medscale.trainer.config import TrainConfig

REACH_WAIT_S = 60.0  # how long a node waits for node 0's endpoint to open (nodes seldom start together)


def visible_gpus() -> int:
    """The CUDA devices this process sees (0 without torch's CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def procs_per_node(cfg: LaunchConfig) -> int:
    """`launch.procs_per_node`, or one process per visible GPU, or 1."""
    return cfg.procs_per_node or visible_gpus() or 1


def check_gpus(cfg: LaunchConfig, gpus: int) -> None:
    """More processes than GPUs on a GPU node would share devices: refuse."""
    if gpus and procs_per_node(cfg) > gpus:
        raise ConfigError(f"launch.procs_per_node is {cfg.procs_per_node} but this node sees {gpus} GPU(s): set "
                          f"launch.procs_per_node={gpus} or less (or unset it: one process per GPU)")


def _is_this_machine(host: str) -> bool:
    """Whether `host` names an address of this machine."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    if any(a.startswith("127.") or a == "::1" for a in addresses):
        return True
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
                return True
            except OSError:
                continue
    return False


def check_endpoint(cfg: LaunchConfig, wait_s: float = REACH_WAIT_S) -> None:
    """Node 0 will open the rendezvous port on this machine: it must be here and free. Any other node must reach
    it (within `wait_s`: node 0 may start a little later)."""
    host, port = cfg.endpoint()
    key = "launch.rdzv_endpoint"
    if cfg.this_node() == 0:
        if not _is_this_machine(host):
            raise ConfigError(f"{key} {host}:{port} is not this machine, but this is node 0 (launch.node_rank or the "
                              f"scheduler's NODE_RANK/SLURM_NODEID say so): run node 0 on {host}, or set {key} to "
                              "this machine's address")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store does: TIME_WAIT is free
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise ConfigError(f"{key}: port {port} on {host} is already taken (another job's rendezvous?): "
                                  f"choose a free port, e.g. {key}={host}:{_free_port()}") from None
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ConfigError(f"{key} {host}:{port} is unreachable from node {cfg.this_node()} after "
                                  f"{wait_s:.0f} s ({exc.strerror or exc}): start node 0 first, check the address "
                                  "and that the port is open between the nodes") from None
            time.sleep(1.0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def check_run_dir(url: str, storage_options: dict) -> None:
    """The run directory (a folder or object storage) takes a small file and gives it back."""
    fs, root = filesystem(url, storage_options)
    probe = join(root, f"_preflight-{uuid.uuid4().hex[:8]}")
    try:
        if is_local(fs):
            fs.makedirs(root, exist_ok=True)  # (on object storage this would create a bucket)
        fs.pipe_file(probe, b"medscale")
        fs.rm_file(probe)
    except Exception as exc:
        raise StorageError(f"train.run_dir {url} is not writable from {socket.gethostname()} ({describe(exc)}): "
                           "fix its permissions or credentials (train.storage_options), or choose another "
                           "train.run_dir") from None


def preflight(launch: LaunchConfig, train: TrainConfig, loader: LoaderConfig) -> None:
    """Every check for a launch on this node (not the endpoint: `check_endpoint`, when there is a rendezvous)."""
    from medscale.trainer.engine import check_run_config  # (DeepSpeed's import: only when launching)

    check_run_config(train, loader)
    check_gpus(launch, visible_gpus())
    fs, root = filesystem(train.data, loader.storage_options)
    kept_digest(fs, root, train.data)
    check_run_dir(train.run_dir, train.storage_options)
