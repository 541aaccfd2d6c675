"""`medscale cluster spot | ray | up | down | status`: write the engine's file, check it with the engine's own
validator, then submit it (`sky jobs launch`) or run `ray up | down | status` on it.

    code = cluster_command("spot", {"train": cfg.train, "launch": cfg.launch, "cluster": cfg.cluster, ...})
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict

import yaml

from medscale.cluster import raycluster, skypilot


def shipped_config(sections: Dict[str, Any]) -> str:
    """The resolved config (`sections`: name -> section dataclass) as a spot task carries it: every
    `storage_options` left out (they may hold credentials; the nodes use the cloud's environment chain,
    `cluster.spot.envs` for a non-secret endpoint)."""
    data = {name: dataclasses.asdict(section) for name, section in sections.items()}
    dropped = [name for name, section in data.items() if section.get("storage_options")]
    for section in data.values():
        if "storage_options" in section:
            section["storage_options"] = {}
    if dropped:
        print(f"medscale cluster spot: {', '.join(s + '.storage_options' for s in dropped)} not written into the task "
              "(credentials stay off disk): the nodes use the AWS environment chain (an instance role, or "
              "`sky jobs launch --secret`); cluster.spot.envs.AWS_ENDPOINT_URL names another endpoint", file=sys.stderr)
    return yaml.safe_dump(data, sort_keys=False)


def cluster_command(action: str, sections: Dict[str, Any], dry_run: bool) -> int:
    """One `medscale cluster ACTION` of the run whose config `sections` are; its exit code."""
    spot, ray = sections["cluster"].spot, sections["cluster"].ray
    if action == "spot":
        path = Path(spot.task or f"{spot.name}.sky.yaml")
        text = skypilot.task_yaml(skypilot.spot_task(spot, sections["launch"], sections["train"],
                                                     shipped_config(sections)))
    else:
        path = Path(ray.file or f"{ray.name}.ray.yaml")
        if action != "ray":
            return raycluster.run_ray(action, path)
        cluster = raycluster.ray_cluster(ray)
        raycluster.check_cluster(cluster, "cluster.ray")
        text = yaml.safe_dump(cluster, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if dry_run:
        print(text, end="")
    if action == "ray":
        print(f"medscale cluster ray -> {path} (checked with Ray's schema); `medscale cluster up` starts it",
              file=sys.stderr)
        return 0
    skypilot.check_task(path)
    print(f"medscale cluster spot -> {path} (checked with SkyPilot's schema)", file=sys.stderr)
    return 0 if dry_run else skypilot.submit(path, spot.name)
