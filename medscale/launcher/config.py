"""The launcher's config section (`launch.*`): which launcher, how many nodes and processes, the rendezvous, the
grace a rank has to save after a signal."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from medscale.core.config import check, check_choice

BACKENDS = ("torchrun", "deepspeed", "slurm")
NODE_RANK_VARIABLES = ("NODE_RANK", "SLURM_NODEID", "SKYPILOT_NODE_RANK")  # set per node by the schedulers
_NODES = re.compile(r"^(\d+)(?::(\d+))?$")
_ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
DEFAULT_PORT = 29400  # torchrun's c10d default


@dataclass
class SlurmOptions:
    """The batch job `launch.backend=slurm` writes and submits."""

    script: Optional[str] = None  # where the sbatch script goes (default ./medscale-<rdzv_id>.sbatch)
    output: Optional[str] = None  # the job's log, one for every attempt (default ./medscale-<rdzv_id>-%j.log)
    sbatch: List[str] = field(default_factory=list)  # more #SBATCH options, e.g. ["--partition=gpu", "--time=4:00:00"]


@dataclass
class LaunchConfig:
    """How `medscale launch` starts the trainer (`medscale pretrain`) on this node or as a SLURM job."""

    backend: str = "torchrun"  # torchrun | deepspeed | slurm
    nodes: str = "1"  # N, or MIN:MAX for an elastic torchrun job
    procs_per_node: Optional[int] = None  # default: the visible GPUs, else 1
    rdzv_endpoint: Optional[str] = None  # HOST:PORT of node 0 (torchrun's c10d store, DeepSpeed's master)
    rdzv_id: Optional[str] = None  # the job's name in the rendezvous (default: derived from train.run_dir)
    rdzv_conf: Dict[str, str] = field(default_factory=dict)  # torchrun --rdzv-conf, e.g. {last_call_timeout: 5}
    node_rank: Optional[int] = None  # this node's rank (default: NODE_RANK, SLURM_NODEID, SKYPILOT_NODE_RANK or 0)
    hosts: List[str] = field(default_factory=list)  # deepspeed over ssh: the hosts; none: --no_ssh on every node
    max_restarts: int = 3  # torchrun restarts of a failed worker group (a node joining or leaving is free)
    grace_s: int = 120  # seconds a rank has to save after a signal before it is killed
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def validate(self, origin: str) -> None:
        """Value checks, each naming its key."""
        check_choice(self.backend, BACKENDS, origin, "launch.backend")
        match = _NODES.match(str(self.nodes))
        check(bool(match) and int(match.group(1)) >= 1 and int(match.group(2) or match.group(1)) >= int(match.group(1)),
              origin, "launch.nodes", "N or MIN:MAX with 1 <= MIN <= MAX", self.nodes)
        low, high = self.node_range()
        check(low == high or self.backend != "deepspeed", origin, "launch.nodes",
              "a fixed N with the deepspeed launcher (MIN:MAX is elastic: launch.backend=torchrun or slurm)",
              self.nodes)
        check(self.procs_per_node is None or self.procs_per_node >= 1, origin, "launch.procs_per_node",
              "null (the visible GPUs, else 1) or an int >= 1", self.procs_per_node)
        check(self.rdzv_endpoint is None or bool(_ENDPOINT.match(self.rdzv_endpoint))
              and 0 < int(self.rdzv_endpoint.rsplit(":", 1)[1]) < 65536,
              origin, "launch.rdzv_endpoint", "HOST:PORT (node 0's address and a free port)", self.rdzv_endpoint)
        check(self.rdzv_endpoint is not None or high == 1 or self.backend == "slurm" or bool(self.hosts), origin,
              "launch.rdzv_endpoint", "HOST:PORT of node 0 for a job on more than one node", self.rdzv_endpoint)
        check(self.node_rank is None or 0 <= self.node_rank < high, origin, "launch.node_rank",
              f"null or an int in [0, {high})", self.node_rank)
        check(not self.hosts or len(self.hosts) == high and len(set(self.hosts)) == len(self.hosts), origin,
              "launch.hosts", f"{high} distinct host names (one per node), or [] for --no_ssh", self.hosts)
        check(self.max_restarts >= 0, origin, "launch.max_restarts", "an int >= 0", self.max_restarts)
        check(self.grace_s >= 1, origin, "launch.grace_s", "an int >= 1 (seconds)", self.grace_s)

    def node_range(self) -> Tuple[int, int]:
        """(MIN, MAX) nodes."""
        low, _, high = str(self.nodes).partition(":")
        return int(low), int(high or low)

    def endpoint(self) -> Tuple[str, int]:
        """(host, port) of the rendezvous; 127.0.0.1 and the c10d default port when not set."""
        if not self.rdzv_endpoint:
            return "127.0.0.1", DEFAULT_PORT
        host, _, port = self.rdzv_endpoint.rpartition(":")
        return host.strip("[]"), int(port)

    def this_node(self) -> int:
        """This node's rank: `launch.node_rank`, else what the scheduler set, else 0."""
        if self.node_rank is not None:
            return self.node_rank
        for name in NODE_RANK_VARIABLES:
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
        return 0


def job_id(run_dir: Optional[str], endpoint: Optional[str]) -> str:
    """The rendezvous id when `launch.rdzv_id` is not set: from the run directory and the endpoint, so the same on
    every node and relaunch of a job, and different for another job (the trainer's lease trusts it)."""
    key = f"{(run_dir or '').rstrip('/')}@{endpoint or ''}"
    return "medscale-" + hashlib.sha256(key.encode()).hexdigest()[:12]
