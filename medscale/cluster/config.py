"""The cluster config section (`cluster.*`): the SkyPilot managed job of a spot run, the Ray cluster of the data and
evaluation services, and the spot-notice watcher that turns a cloud's interruption notice into a preemption."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from medscale.cluster.notice import CHOICES
from medscale.core.config import check

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a cloud-safe name: SkyPilot's and Ray's clusters


@dataclass
class SpotOptions:
    """The SkyPilot managed job `medscale cluster spot` writes and submits (`sky jobs launch`)."""

    name: str = "medscale"  # the managed job's name
    infra: Optional[str] = None  # SkyPilot infra: aws, aws/us-east-1, gcp, k8s... (null: any enabled cloud)
    accelerators: Optional[str] = None  # per node, e.g. H100:8 (null: CPU nodes)
    cpus: Optional[str] = None  # per node, e.g. 8+ (SkyPilot's syntax)
    memory: Optional[str] = None  # per node, e.g. 32+
    use_spot: bool = True  # spot (preemptible) instances; false: on-demand
    strategy: str = "FAILOVER"  # job_recovery strategy, a name in SkyPilot's registry
    max_restarts_on_errors: int = 2  # relaunches after a failure; preemptions (exit 75, a lost node) are not counted
    install: str = "pip install 'medscale[cloud]'"  # the setup step on every fresh node (pin a version or a git URL)
    port: int = 29400  # the rendezvous port on the first node
    envs: Dict[str, str] = field(default_factory=dict)  # non-secret variables, e.g. {AWS_ENDPOINT_URL: ...}
    task: Optional[str] = None  # where the task YAML goes (default ./<name>.sky.yaml)


@dataclass
class WorkerType:
    """One kind of Ray worker node."""

    node_config: Dict[str, Any] = field(default_factory=dict)  # passed to the cloud, e.g. {InstanceType: c5.4xlarge}
    min_workers: int = 0  # nodes kept up
    max_workers: int = 4  # nodes at most (the autoscaler adds them as work waits)
    resources: Dict[str, int] = field(default_factory=dict)  # Ray resources when the cloud cannot say (CPU, GPU)
    spot: bool = True  # spot instances for this node type


@dataclass
class RayOptions:
    """The Ray cluster file `medscale cluster ray` writes: an on-demand head, spot workers for sharding and eval."""

    name: str = "medscale"  # Ray's cluster_name
    provider: Dict[str, Any] = field(  # Ray's provider section (type, region, ...)
        default_factory=lambda: {"type": "aws", "region": "us-east-1"})
    ssh_user: str = "ubuntu"  # the nodes' login user
    head: Dict[str, Any] = field(default_factory=lambda: {"InstanceType": "m5.2xlarge"})  # the head's node_config
    shard_workers: WorkerType = field(default_factory=lambda: WorkerType({"InstanceType": "c5.4xlarge"}, 0, 8))
    eval_workers: WorkerType = field(default_factory=lambda: WorkerType({"InstanceType": "g5.2xlarge"}, 0, 2))
    idle_timeout_minutes: int = 5  # an idle worker node is released after this
    install: str = "pip install 'medscale[cloud]'"  # each node's setup command
    file: Optional[str] = None  # where the cluster file goes (default ./<name>.ray.yaml)


@dataclass
class ClusterConfig:
    """Cloud runs: the spot job, the Ray cluster, and the interruption-notice watcher beside `medscale launch`."""

    spot: SpotOptions = field(default_factory=SpotOptions)
    ray: RayOptions = field(default_factory=RayOptions)
    spot_notice: Optional[str] = None  # null (off) | auto | aws | gcp: poll for interruption notices (spot task: on)
    notice_interval_s: float = 5.0  # seconds between polls (AWS gives two minutes of notice)
    metadata_url: Optional[str] = None  # the metadata server (default the cloud's own: 169.254.169.254, ...)

    def validate(self, origin: str) -> None:
        """Value checks, each naming its key."""
        spot, ray = self.spot, self.ray
        for key, name in (("cluster.spot.name", spot.name), ("cluster.ray.name", ray.name)):
            check(bool(_NAME.match(name)), origin, key, "lower-case letters, digits and '-', starting with a letter",
                  name)
        check(spot.max_restarts_on_errors >= 0, origin, "cluster.spot.max_restarts_on_errors", "an int >= 0",
              spot.max_restarts_on_errors)
        check(0 < spot.port < 65536, origin, "cluster.spot.port", "a TCP port", spot.port)
        check(bool(spot.install.strip()), origin, "cluster.spot.install", "the command that installs medscale",
              spot.install)
        check("type" in ray.provider, origin, "cluster.ray.provider", "a Ray provider with a type, e.g. "
              "{type: aws, region: us-east-1}", ray.provider)
        for key, workers in (("cluster.ray.shard_workers", ray.shard_workers),
                             ("cluster.ray.eval_workers", ray.eval_workers)):
            check(0 <= workers.min_workers <= workers.max_workers, origin, key + ".min_workers",
                  f"0 <= min_workers <= max_workers ({workers.max_workers})", workers.min_workers)
        check(self.spot_notice is None or self.spot_notice in CHOICES, origin, "cluster.spot_notice",
              "null | " + " | ".join(CHOICES), self.spot_notice)
        check(self.notice_interval_s > 0, origin, "cluster.notice_interval_s", "seconds > 0", self.notice_interval_s)

