"""The launch section: its checks name the key, `MIN:MAX` stays text, the rendezvous id is stable per job."""

import pytest

from medscale.config import load
from medscale.core.errors import ConfigError
from medscale.launcher.config import job_id


@pytest.mark.parametrize("override, key", [
    ("launch.nodes=0", "launch.nodes"),
    ("launch.nodes=3:2", "launch.nodes"),
    ("launch.nodes=two", "launch.nodes"),
    ("launch.backend=mpirun", "launch.backend"),
    ("launch.rdzv_endpoint=nohostport", "launch.rdzv_endpoint"),
    ("launch.rdzv_endpoint=h:70000", "launch.rdzv_endpoint"),
    ("launch.procs_per_node=0", "launch.procs_per_node"),
    ("launch.grace_s=0", "launch.grace_s"),
])
def test_a_bad_launch_key_is_named_with_its_override(override, key):
    with pytest.raises(ConfigError) as error:
        load(None, [override])
    assert f"'{key}'" in str(error.value) and override in str(error.value)


def test_the_deepspeed_launcher_is_not_elastic_and_many_nodes_need_an_endpoint():
    with pytest.raises(ConfigError, match="launch.backend=torchrun"):
        load(None, ["launch.backend=deepspeed", "launch.nodes=1:2", "launch.rdzv_endpoint=h:1"])
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        load(None, ["launch.nodes=2"])
    with pytest.raises(ConfigError, match="distinct host names"):
        load(None, ["launch.backend=deepspeed", "launch.nodes=2", "launch.hosts=[a,a]"])
    with pytest.raises(ConfigError, match="launch.node_rank"):
        load(None, ["launch.nodes=2", "launch.rdzv_endpoint=h:1", "launch.node_rank=2"])


def test_min_colon_max_is_text_not_yaml_base_60(tmp_path):
    assert load(None, ["launch.nodes=1:2", "launch.rdzv_endpoint=h:1"]).launch.node_range() == (1, 2)
    config = tmp_path / "run.yaml"
    config.write_text("launch:\n  nodes: 2:4   # elastic\n  rdzv_endpoint: 10.0.0.1:29400\n  slurm:\n"
                      "    sbatch:\n    - --time=4:00:00\n")
    launch = load(config).launch
    assert (launch.nodes, launch.rdzv_endpoint, launch.slurm.sbatch) == ("2:4", "10.0.0.1:29400", ["--time=4:00:00"])


def test_the_rendezvous_id_is_one_per_run_directory_and_endpoint():
    assert job_id("s3://b/run", "h:1") == job_id("s3://b/run/", "h:1")
    assert len({job_id("s3://b/run", "h:1"), job_id("s3://b/other", "h:1"), job_id("s3://b/run", "h:2")}) == 3


def test_the_node_rank_comes_from_the_scheduler(monkeypatch):
    launch = load(None, ["launch.nodes=2", "launch.rdzv_endpoint=h:1"]).launch
    for name in ("NODE_RANK", "SLURM_NODEID", "SKYPILOT_NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch.this_node() == 0
    monkeypatch.setenv("SKYPILOT_NODE_RANK", "1")
    assert launch.this_node() == 1
    launch.node_rank = 0
    assert launch.this_node() == 0
