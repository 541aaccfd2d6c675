"""`medscale cluster spot`: the run as a SkyPilot managed job on spot instances. SkyPilot provisions the nodes and,
when they are preempted (or the job exits 75 after a notice), provisions new ones and runs `setup` and `run` again
from scratch; the run directory in object storage carries the run across, and `medscale launch` resumes it.

    task = spot_task(cluster.spot, launch, train, config_text)   # a dict: the task YAML
    check_task(path)                                               # SkyPilot's own validators, offline
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from medscale.cluster.config import SpotOptions
from medscale.cluster.notice import SOURCES
from medscale.core.errors import ConfigError
from medscale.core.runs import PREEMPTED_EXIT
from medscale.core.storage import filesystem, is_local
from medscale.launcher.config import LaunchConfig
from medscale.trainer.config import TrainConfig

CONFIG_FILE = "medscale-run.yaml"  # written by the task's `run` into its (fresh) working directory
INSTALL_HINT = "SkyPilot is not installed here: pip install 'medscale[cloud]' (or pip install skypilot==0.14.*)"
END_OF_CONFIG = "MEDSCALE_CONFIG_END"


def notice_source(spot: SpotOptions) -> Optional[str]:
    """The interruption notices the task's nodes poll: the infra's cloud when medscale knows it (AWS, GCP), `auto`
    when SkyPilot chooses the cloud, none for other infra (Kubernetes: SkyPilot handles it) or on-demand nodes."""
    if not spot.use_spot:
        return None
    cloud = (spot.infra or "").split("/", 1)[0].lower()
    return "auto" if not cloud else cloud if cloud in SOURCES else None


def run_script(spot: SpotOptions, config_text: str) -> str:
    """The task's `run`: write the run's config, then `medscale launch` torchrun with SkyPilot's node variables (the
    first node of `SKYPILOT_NODE_IPS` holds the rendezvous; `SKYPILOT_TASK_ID` names the job in every recovery)."""
    if END_OF_CONFIG in config_text:
        raise ConfigError(f"the run's config contains {END_OF_CONFIG!r}, which ends the task's here-document")
    overrides = ["launch.backend=torchrun", "launch.nodes=$SKYPILOT_NUM_NODES", "launch.node_rank=$SKYPILOT_NODE_RANK",
                 f"launch.rdzv_endpoint=$HEAD:{spot.port}", "launch.rdzv_id=$SKYPILOT_TASK_ID"]
    source = notice_source(spot)
    if source:
        overrides.append(f"cluster.spot_notice={source}")
    return "\n".join([
        "set -uo pipefail",
        f"cat > {CONFIG_FILE} <<'{END_OF_CONFIG}'",
        config_text.rstrip("\n"),
        END_OF_CONFIG,
        'HEAD=$(echo "$SKYPILOT_NODE_IPS" | head -n1)',
        f"exec medscale launch -c {CONFIG_FILE} " + " ".join(f'"{o}"' for o in overrides),
    ]) + "\n"


def spot_task(spot: SpotOptions, launch: LaunchConfig, train: TrainConfig, config_text: str) -> Dict[str, Any]:
    """The SkyPilot task (as YAML data) of the run whose resolved config is `config_text`: spot nodes, recovery on
    exit 75 (not counted) and a bounded number of failures, setup that installs medscale, run that launches."""
    if not train.run_dir:
        raise ConfigError("train.run_dir is not set: a spot job needs its run directory in object storage "
                          "(train.run_dir=s3://BUCKET/runs/NAME)")
    if is_local(filesystem(train.run_dir, {"deadline_s": 5})[0]):
        raise ConfigError(f"train.run_dir={train.run_dir} is a local path: a spot job's nodes are replaced on "
                          "preemption, so its run directory must be in object storage (s3://BUCKET/runs/NAME)")
    if launch.backend != "torchrun":
        raise ConfigError(f"launch.backend={launch.backend}: a spot job launches with torchrun on each node "
                          "(SkyPilot provisions the nodes); set launch.backend=torchrun")
    resources: Dict[str, Any] = {"use_spot": spot.use_spot, "job_recovery": {
        "strategy": spot.strategy, "max_restarts_on_errors": spot.max_restarts_on_errors,
        "recover_on_exit_codes": [PREEMPTED_EXIT]}}
    for key in ("infra", "accelerators", "cpus", "memory"):
        if getattr(spot, key) is not None:
            resources[key] = getattr(spot, key)
    task: Dict[str, Any] = {"name": spot.name, "num_nodes": launch.node_range()[1], "resources": resources}
    if spot.envs:
        task["envs"] = dict(spot.envs)
    task["setup"] = f"set -euo pipefail\n{spot.install}\n"
    task["run"] = run_script(spot, config_text)
    return task


class _Literal(str):
    """A multi-line string written as a YAML block (`|`), so that the scripts read as scripts."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


def task_yaml(task: Dict[str, Any]) -> str:
    """The task as YAML, its scripts as blocks."""
    dumper = type("TaskDumper", (yaml.SafeDumper,), {})
    dumper.add_representer(_Literal, _literal)
    shown = {k: (_Literal(v) if isinstance(v, str) and "\n" in v else v) for k, v in task.items()}
    return yaml.dump(shown, Dumper=dumper, sort_keys=False, width=1000)


def _sky() -> Any:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # SkyPilot's database migrations say hello at INFO
    try:
        import sky
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    return sky


def check_task(path: Path) -> None:
    """SkyPilot's own checks, offline: the task schema (`sky.Task.from_yaml`) and the recovery strategy's name (its
    registry); a ConfigError naming the file otherwise. Cloud catalogs (accelerator names) are not checked here."""
    sky = _sky()
    try:
        task = sky.Task.from_yaml(str(path))
        strategy = (yaml.safe_load(path.read_text()).get("resources") or {}).get("job_recovery") or {}
        if isinstance(strategy, dict) and strategy.get("strategy"):
            sky.JOBS_RECOVERY_STRATEGY_REGISTRY.from_str(strategy["strategy"])
    except (ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: SkyPilot refuses the task: {first}") from exc
    if task.num_nodes < 1:
        raise ConfigError(f"{path}: num_nodes must be >= 1")


def submit(path: Path, name: str) -> int:
    """`sky jobs launch` the task (SkyPilot asks no questions: -y); its exit code."""
    _sky()
    command: List[str] = ["sky", "jobs", "launch", "-y", "-n", name, str(path)]
    print(f"medscale cluster spot: {shlex.join(command)}", flush=True)
    return subprocess.run(command).returncode
