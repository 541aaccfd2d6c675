"""`medscale cluster spot`: the SkyPilot managed-job task of a run, checked by SkyPilot's own validators offline
(each check in a fresh HOME: importing SkyPilot writes ~/.sky)."""

import os
import subprocess
import sys

import pytest
import yaml

from medscale.config import load
from tests.trainer.conftest import MAE_TINY, REPO

RUN = ["train.run_dir=s3://medscale-test/runs/spot", "train.data=s3://medscale-test/corpus", "launch.nodes=2",
       "launch.rdzv_endpoint=node0:29400", "cluster.spot.infra=aws", "cluster.spot.accelerators=A100:8"]


def cluster(tmp_path, *args, python=None):
    """`medscale cluster ARGS` in `tmp_path` with a fresh HOME; the finished process."""
    command = python or [sys.executable, "-m", "medscale", "cluster"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO)))


def test_the_task_recovers_on_75_runs_the_launcher_from_skypilots_variables_and_passes_skypilot(tmp_path):
    done = cluster(tmp_path, "spot", "--dry-run", "-c", str(MAE_TINY), *RUN,
                   "train.storage_options.secret=SECRET-VALUE", "cluster.spot.envs.AWS_ENDPOINT_URL=http://minio:9000")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked with SkyPilot's schema" in done.stderr and "train.storage_options not written" in done.stderr
    text = (tmp_path / "medscale.sky.yaml").read_text()
    assert "SECRET-VALUE" not in text and "SECRET-VALUE" not in done.stdout + done.stderr  # credentials stay off disk
    task = yaml.safe_load(text)
    assert task["num_nodes"] == 2 and task["envs"] == {"AWS_ENDPOINT_URL": "http://minio:9000"}
    assert task["resources"] == {"use_spot": True, "infra": "aws", "accelerators": "A100:8", "job_recovery": {
        "strategy": "FAILOVER", "max_restarts_on_errors": 2, "recover_on_exit_codes": [75]}}
    assert "pip install 'medscale[cloud]'" in task["setup"]
    run = task["run"]
    for part in ("launch.node_rank=$SKYPILOT_NODE_RANK", "launch.nodes=$SKYPILOT_NUM_NODES",
                 "launch.rdzv_endpoint=$HEAD:29400", "launch.rdzv_id=$SKYPILOT_TASK_ID", "cluster.spot_notice=aws"):
        assert part in run, part
    config_text = run.split("<<'MEDSCALE_CONFIG_END'\n", 1)[1].split("\nMEDSCALE_CONFIG_END\n", 1)[0]
    shipped = tmp_path / "shipped.yaml"
    shipped.write_text(config_text)
    cfg = load(shipped)  # the config the nodes read is a valid one: the same run
    assert cfg.train.run_dir == "s3://medscale-test/runs/spot" and cfg.train.storage_options == {}
    assert subprocess.run(["bash", "-n", "-c", run]).returncode == 0


@pytest.mark.parametrize("edit, said", [
    (lambda t: t["resources"].update(use_spt=True), "Instead of 'use_spt', did you mean 'use_spot'?"),
    (lambda t: t["resources"]["job_recovery"].update(strategy="FAILOVR"), "Did you mean 'failover'?"),
    (lambda t: t["resources"]["job_recovery"].update(recover_on_exit_codes=[75, 300]), "greater than the maximum"),
])
def test_a_broken_task_is_refused_with_one_line_before_anything_is_submitted(tmp_path, edit, said):
    assert cluster(tmp_path, "spot", "--dry-run", "-c", str(MAE_TINY), *RUN).returncode == 0
    path = tmp_path / "medscale.sky.yaml"
    task = yaml.safe_load(path.read_text())
    edit(task)
    path.write_text(yaml.safe_dump(task))
    code = ("import sys; from pathlib import Path; from medscale.cluster.skypilot import check_task\n"
            "from medscale.core.errors import ConfigError\n"
            "try:\n    check_task(Path('medscale.sky.yaml'))\n"
            "except ConfigError as exc:\n    sys.exit(print(f'medscale: error: {exc}', file=sys.stderr) or 2)")
    done = cluster(tmp_path, python=[sys.executable, "-c", code])
    lines = [line for line in done.stderr.splitlines() if line.startswith("medscale: error:")]
    assert done.returncode == 2 and len(lines) == 1 and "medscale.sky.yaml: SkyPilot refuses the task" in lines[0]
    assert said in lines[0] and "Traceback" not in done.stderr


def test_a_bad_strategy_in_the_config_is_refused_by_skypilots_registry(tmp_path):
    done = cluster(tmp_path, "spot", "-c", str(MAE_TINY), *RUN, "cluster.spot.strategy=FAILOVR")
    assert done.returncode == 2 and "not a valid jobs recovery strategy" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_local_run_directory_is_refused(tmp_path):
    done = cluster(tmp_path, "spot", "--dry-run", "-c", str(MAE_TINY), *RUN, f"train.run_dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "must be in object storage (s3://BUCKET/runs/NAME)" in done.stderr


def test_without_skypilot_the_command_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['sky'] = None  # SkyPilot not installed\n"
            "from medscale.cli import main; sys.exit(main(sys.argv[1:]))")
    done = cluster(tmp_path, "cluster", "spot", "-c", str(MAE_TINY), *RUN, python=[sys.executable, "-c", code])
    assert done.returncode == 2 and "pip install 'medscale[cloud]'" in done.stderr, done.stderr[-2000:]
