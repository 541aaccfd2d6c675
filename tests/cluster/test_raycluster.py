"""`medscale cluster ray`: the Ray cluster file of the data and evaluation services, checked with Ray's own schema;
`medscale cluster up | down | status` on it."""

import os
import subprocess
import sys

import pytest
import yaml

from medscale.cluster.config import RayOptions, WorkerType
from medscale.cluster.raycluster import check_cluster, ray_cluster, ray_command
from medscale.core.errors import ConfigError
from tests.trainer.conftest import MAE_TINY, REPO


def medscale(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "medscale", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_an_on_demand_head_and_spot_workers_for_sharding_and_evaluation_pass_rays_schema(tmp_path):
    done = medscale(tmp_path, "cluster", "ray", "--dry-run", "-c", str(MAE_TINY), "cluster.ray.name=mid",
                    "cluster.ray.shard_workers.max_workers=16")
    assert done.returncode == 0, done.stderr[-2000:]
    cluster = yaml.safe_load((tmp_path / "mid.ray.yaml").read_text())
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] == "head" and set(types) == {"head", "shard", "eval"}
    assert "InstanceMarketOptions" not in types["head"]["node_config"]  # the head holds the services' state
    for name in ("shard", "eval"):
        assert types[name]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert types["shard"]["max_workers"] == 16 and cluster["max_workers"] == 18
    assert cluster["setup_commands"] == ["pip install 'medscale[cloud]'"]


def test_gcp_workers_ask_for_preemptible_vms_and_an_unknown_provider_says_what_to_do():
    gcp = ray_cluster(RayOptions(provider={"type": "gcp", "region": "us-central1", "project_id": "p"},
                                 head={"machineType": "n2-standard-8"}))
    assert gcp["available_node_types"]["eval"]["node_config"]["scheduling"] == [{"preemptible": True}]
    with pytest.raises(ConfigError, match="cluster.ray.shard_workers.spot: .* not 'azure': set "):
        ray_cluster(RayOptions(provider={"type": "azure"}))
    ray_cluster(RayOptions(provider={"type": "azure"}, shard_workers=WorkerType(spot=False),
                           eval_workers=WorkerType(spot=False)))


@pytest.mark.parametrize("edit, said", [
    (lambda c: c.update(head_node_type="gpu"), "`head_node_type` must be one of `available_node_types`"),
    (lambda c: c["available_node_types"]["shard"].update(min_wokers=1), "'min_wokers' was unexpected"),
    (lambda c: c["available_node_types"]["eval"].update(resources={"GPU": "one"}), "'one' is not of type"),
])
def test_a_broken_cluster_file_is_refused_with_one_line(edit, said):
    cluster = ray_cluster(RayOptions())
    edit(cluster)
    with pytest.raises(ConfigError) as caught:
        check_cluster(cluster, "mid.ray.yaml")
    assert str(caught.value).startswith("mid.ray.yaml: Ray refuses the cluster file: ") and said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_up_down_status_run_ray_on_the_file(tmp_path):
    assert ray_command("up", tmp_path / "c.yaml") == ["ray", "up", "-y", str(tmp_path / "c.yaml")]
    assert ray_command("status", tmp_path / "c.yaml") == ["ray", "exec", str(tmp_path / "c.yaml"), "ray status"]
    done = medscale(tmp_path, "cluster", "up", "-c", str(MAE_TINY))
    assert done.returncode == 2 and "medscale.ray.yaml: no cluster file: write it first with `medscale cluster ray" \
        in done.stderr
