"""One process per GPU (per rank on CPU): rank, world and backend from the launcher's environment (torchrun, the
deepspeed launcher, or nothing for one process), and the preemption flag that every rank agrees on."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import torch
import torch.distributed as dist

from medscale.core.logs import THIRD_PARTY

logger = logging.getLogger(__name__)
LAUNCHER_POLL_S = 1.0  # how often a rank checks that its launcher is alive
ORPHANED_EXIT = 1


@dataclass
class Dist:
    """Where this process stands: rank, world size, local rank, the device it trains on, the backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, logs and writes shared files."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> Dist:
    """Join the process group the launcher set up (RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK), or make a
    group of one; NCCL on GPUs, gloo on CPU."""
    import deepspeed

    if "RANK" in os.environ:  # started by a launcher (torchrun, deepspeed, srun): live and die with it
        die_with_launcher()
    else:  # a plain `medscale pretrain`: a world of one, no variables needed
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if backend == "gloo":
            announce_build("deepspeed_shm_comm", "shared-memory collectives")
        with contextlib.redirect_stdout(io.StringIO()) as said:  # DeepSpeed prints its op builds: to the log file
            deepspeed.init_distributed(dist_backend=backend)
        for line in said.getvalue().splitlines():
            THIRD_PARTY.info("deepspeed: %s", line)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def announce_build(op: str, what: str) -> None:
    """Say (rank 0) that DeepSpeed compiles its op `op` now, when it has not been built on this machine: the
    first run's otherwise silent minute."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        built = any(Path(_get_build_directory(op, False)).glob("*.so"))
    except Exception:  # another torch: say nothing rather than guess
        return
    if not built and os.environ.get("RANK", "0") == "0":
        logger.info("compiling DeepSpeed's %s (the first run on this machine only: a minute or two)", what)


def die_with_launcher(poll_s: float = LAUNCHER_POLL_S) -> None:
    """Stop this process within `poll_s` of its parent's death (the launcher's agent, SIGKILLed or lost with its
    node): torchrun starts ranks in their own session, so nothing else stops them, and a relaunch must never meet
    them still training and writing. Nothing partial is committed: a checkpoint counts only once its marker is
    written, last."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        sys.stderr.write(f"medscale: rank {os.environ.get('RANK', '?')} lost its launcher (pid {parent}): stopping "
                         "now; nothing partial is committed, and a relaunch resumes from the last checkpoint\n")
        sys.stderr.flush()
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="medscale-launcher-watch", daemon=True).start()


def batch_norm_across_ranks(method: torch.nn.Module, world: Dist) -> str:
    """Make `method`'s BatchNorm layers SyncBatchNorm where the backend has it (NCCL, several ranks); returns what
    the log says of its BatchNorm ('' when it has none)."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in method.modules()):
        return ""
    if world.world_size == 1:
        return "BatchNorm: one rank, statistics of its whole batch"
    if world.backend == "nccl":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        return f"BatchNorm: SyncBatchNorm over {world.world_size} ranks (statistics of the global batch)"
    return (f"BatchNorm: per rank ({world.backend} has no SyncBatchNorm: each of the {world.world_size} ranks "
            "normalises with its own batch's statistics)")


def first_failure(failure: str) -> Tuple[int, str]:
    """(rank, failure) of the lowest rank whose `failure` is not empty, or (-1, ""): every rank calls it at the same
    point and learns the cause itself (not a bare flag), so each says the same and none waits forever."""
    found = [failure]
    if dist.is_initialized() and dist.get_world_size() > 1:
        found = [""] * dist.get_world_size()
        dist.all_gather_object(found, failure)
    return next(((rank, text) for rank, text in enumerate(found) if text), (-1, ""))


def all_reduce_step(values: List[float], device: torch.device) -> List[float]:
    """Sum `values` over all ranks in one call (losses, the preemption flag, a non-finite count)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()
