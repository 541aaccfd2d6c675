"""`medscale launch --dry-run`: what it prints is read back by the launchers' own parsers (torchrun, DeepSpeed's
runner and hostfile reader, bash and SLURM's `#SBATCH` options), not compared with snapshots."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import ENV, MAE_TINY, REPO

RUN = ["train.data=/data/corpus", "train.run_dir=s3://bucket/runs/a"]


def dry_run(*overrides):
    """`medscale launch --dry-run` with the tiny MAE config; its standard output."""
    done = subprocess.run([sys.executable, "-m", "medscale", "launch", "-c", str(MAE_TINY), *RUN, *overrides,
                           "--dry-run"], capture_output=True, text=True, env=dict(os.environ, **ENV), cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _trainer_part(args):
    """The trainer's command after the launcher's own options: `pretrain -c CONFIG OVERRIDES`."""
    assert args[:1] == ["pretrain"], args
    return args


def test_torchrun_elastic_line_parses_with_torchruns_own_parser():
    from torch.distributed.run import get_args_parser

    line = shlex.split(dry_run("launch.nodes=1:4", "launch.rdzv_endpoint=node0:29555", "launch.procs_per_node=2",
                               "launch.max_restarts=5", "launch.grace_s=300", "launch.rdzv_conf.last_call_timeout=5"))
    assert line[1:3] == ["-m", "torch.distributed.run"]
    args = get_args_parser().parse_args(line[3:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint) == ("1:4", "2", "c10d",
                                                                                       "node0:29555")
    assert args.rdzv_id.startswith("medscale-") and args.rdzv_conf == "last_call_timeout=5"
    assert (args.max_restarts, args.shutdown_timeout) == (5, 300)
    assert set(args.signals_to_handle.split(",")) == {"SIGTERM", "SIGINT", "SIGUSR1"}
    assert args.module and args.training_script == "medscale" and not args.standalone
    trainer = _trainer_part(args.training_script_args)
    assert trainer[1:3] == ["-c", str(MAE_TINY.resolve())] and trainer[3:] == RUN  # the launch.* overrides stay here


def test_a_preset_named_from_another_directory_reaches_the_ranks_as_its_file(tmp_path):
    done = subprocess.run([sys.executable, "-m", "medscale", "launch", "-c", "mae-tiny", *RUN, "--dry-run"],
                          capture_output=True, text=True, env=dict(os.environ, **ENV, PYTHONPATH=str(REPO)),
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    trainer = shlex.split(done.stdout.strip().splitlines()[-1])
    config = trainer[trainer.index("-c") + 1]
    assert config.endswith("presets/mae-tiny.yaml") and Path(config).is_file()  # not cwd/mae-tiny


def test_one_node_without_an_endpoint_is_standalone():
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(shlex.split(dry_run("launch.procs_per_node=3"))[3:])
    assert args.standalone and args.nproc_per_node == "3"


def test_deepspeed_no_ssh_line_and_hostfile_parse_with_deepspeeds_own_readers(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile, parse_args

    out = dry_run("launch.backend=deepspeed", "launch.nodes=3", "launch.procs_per_node=2",
                  "launch.rdzv_endpoint=10.0.0.5:29600", "launch.node_rank=2")
    header, rest = out.split("\n", 1)
    path = re.fullmatch(r"# hostfile (\S+)", header).group(1)
    hosts, line = rest.split("# command\n")
    (tmp_path / "hostfile").write_text(hosts)
    assert fetch_hostfile(str(tmp_path / "hostfile")) == {"node-0": 2, "node-1": 2, "node-2": 2}
    command = shlex.split(line)
    assert command[1:3] == ["-m", "deepspeed.launcher.runner"]
    args = parse_args(command[3:])
    assert (args.hostfile, args.master_addr, args.master_port) == (path, "10.0.0.5", 29600)
    assert args.no_ssh and args.node_rank == 2 and args.module and args.user_script == "medscale"
    _trainer_part(args.user_args)


def test_deepspeed_over_ssh_names_the_hosts():
    from deepspeed.launcher.runner import parse_args

    out = dry_run("launch.backend=deepspeed", "launch.nodes=2", "launch.hosts=[gpu-a,gpu-b]",
                  "launch.procs_per_node=8")
    hosts, line = out.split("\n", 1)[1].split("# command\n")
    assert hosts.splitlines() == ["gpu-a slots=8", "gpu-b slots=8"]
    assert not parse_args(shlex.split(line)[3:]).no_ssh


def test_the_sbatch_script_is_valid_bash_with_the_options_slurm_needs(tmp_path):
    script = dry_run("launch.backend=slurm", "launch.nodes=2", "launch.grace_s=90",
                     "launch.slurm.sbatch=[--partition=gpu,--time=4:00:00]",
                     f"launch.slurm.output={tmp_path}/job-%j.log")
    (tmp_path / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0
    options = dict(line[len("#SBATCH --"):].split("=", 1) if "=" in line else (line[len("#SBATCH --"):], True)
                   for line in script.splitlines() if line.startswith("#SBATCH --"))
    assert options["nodes"] == "2" and options["ntasks-per-node"] == "1" and options["requeue"] is True
    assert options["signal"] == "B:USR1@90" and options["open-mode"] == "append"
    assert options["output"] == f"{tmp_path}/job-%j.log"
    assert options["partition"] == "gpu" and options["time"] == "4:00:00"
    srun = next(shlex.split(line) for line in script.splitlines() if line.startswith("srun "))
    launch = srun[srun.index("-m") + 1:]
    assert launch[:2] == ["medscale", "launch"] and "launch.backend=torchrun" in launch
    assert launch.index("launch.backend=torchrun") > launch.index("launch.backend=slurm")  # the node's own wins
    assert any(a.startswith("launch.rdzv_endpoint=$HEAD:") for a in launch)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and '--outcome "$CODE"' in script


@pytest.mark.parametrize("nodes, expected", [("1:3", "1-3"), ("4", "4")])
def test_an_elastic_slurm_job_asks_for_a_node_range(nodes, expected):
    script = dry_run("launch.backend=slurm", f"launch.nodes={nodes}")
    assert f"#SBATCH --nodes={expected}" in script.splitlines()
