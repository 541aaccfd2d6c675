"""`medscale cluster ray`: a Ray cluster file for the data and evaluation services (an on-demand head; spot worker
node types for sharding and for evaluation), checked with
Ray's own schema; `medscale cluster up | down | status` run `ray up | down | status` on it.

    cluster = ray_cluster(cluster.ray)     # a dict: the cluster YAML
    check_cluster(cluster, path)           # validate_config(prepare_config(...)), offline
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any, Dict, List

from medscale.cluster.config import RayOptions, WorkerType
from medscale.core.errors import ConfigError

HEAD = "head"
# a spot request in each provider's node_config (others: say it in cluster.ray.*.node_config yourself)
SPOT_MARKET: Dict[str, Dict[str, Any]] = {
    "aws": {"InstanceMarketOptions": {"MarketType": "spot"}},
    "gcp": {"scheduling": [{"preemptible": True}]},
}
# validate_config/prepare_config are Ray's private API: used with the Ray versions it was checked with
RAY_TESTED = ((2, 60), (2, 70))


def _node_config(base: Dict[str, Any], spot: bool, provider: str, key: str) -> Dict[str, Any]:
    config = copy.deepcopy(base)
    if spot:
        if provider not in SPOT_MARKET:
            raise ConfigError(f"{key}.spot: medscale knows how to ask {', '.join(SPOT_MARKET)} for spot nodes, "
                              f"not {provider!r}: set {key}.spot=false and say it in {key}.node_config")
        config.update(copy.deepcopy(SPOT_MARKET[provider]))
    return config


def _worker(workers: WorkerType, provider: str, key: str) -> Dict[str, Any]:
    return {"node_config": _node_config(workers.node_config, workers.spot, provider, key),
            "min_workers": workers.min_workers, "max_workers": workers.max_workers,
            "resources": dict(workers.resources)}


def ray_cluster(ray: RayOptions) -> Dict[str, Any]:
    """The cluster YAML (as data): the head on demand, `shard` (CPU) and `eval` (GPU) spot workers that the
    autoscaler starts as the services' tasks ask for CPUs and GPUs, medscale installed on each."""
    provider = str(ray.provider.get("type", ""))
    max_workers = ray.shard_workers.max_workers + ray.eval_workers.max_workers
    return {
        "cluster_name": ray.name,
        "max_workers": max_workers,
        "idle_timeout_minutes": ray.idle_timeout_minutes,
        "provider": copy.deepcopy(ray.provider),
        "auth": {"ssh_user": ray.ssh_user},
        "available_node_types": {
            HEAD: {"node_config": _node_config(ray.head, False, provider, "cluster.ray.head"),
                   "resources": {}, "min_workers": 0, "max_workers": 0},
            "shard": _worker(ray.shard_workers, provider, "cluster.ray.shard_workers"),
            "eval": _worker(ray.eval_workers, provider, "cluster.ray.eval_workers"),
        },
        "head_node_type": HEAD,
        "setup_commands": [ray.install],
        # the dashboard on the head only (`ray dashboard FILE` forwards it): it runs jobs for whoever reaches it
        "head_start_ray_commands": ["ray stop", "ray start --head --port=6379 --autoscaling-config="
                                    "~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1"],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"],
    }


def check_cluster(cluster: Dict[str, Any], origin: str) -> None:
    """Ray's own checks (`validate_config(prepare_config(...))`: keys, node types, worker bounds, resources); a
    ConfigError naming `origin` otherwise. What `node_config` holds goes to the cloud's API unchecked."""
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    version = tuple(int(p) for p in ray.__version__.split(".")[:2])
    if not RAY_TESTED[0] <= version < RAY_TESTED[1]:
        raise ConfigError(f"Ray {ray.__version__}: medscale checks cluster files with Ray {RAY_TESTED[0][0]}."
                          f"{RAY_TESTED[0][1]} to {RAY_TESTED[1][0]}.{RAY_TESTED[1][1] - 1} (a private Ray API)")
    try:
        validate_config(prepare_config(copy.deepcopy(cluster)))
    except Exception as exc:  # jsonschema's ValidationError, Ray's ValueError: both are the file's fault
        message = getattr(exc, "message", None) or str(exc).strip().splitlines()[0]
        where = "/".join(str(p) for p in getattr(exc, "absolute_path", []) or [])
        raise ConfigError(f"{origin}: Ray refuses the cluster file: {message}" + (f" (at {where})" if where else "")
                          ) from exc


def ray_command(action: str, path: Path) -> List[str]:
    """`ray up | down` of the cluster file without questions, or `ray status` on its head node."""
    if action == "status":
        return ["ray", "exec", str(path), "ray status"]
    return ["ray", action, "-y", str(path)]


def run_ray(action: str, path: Path) -> int:
    """Run `ray up | down | status` on the cluster file; its exit code."""
    if not path.is_file():
        raise ConfigError(f"{path}: no cluster file: write it first with `medscale cluster ray -c RUN.yaml`")
    command = ray_command(action, path)
    print(f"medscale cluster {action}: {' '.join(command)}", flush=True)
    return subprocess.run(command).returncode
