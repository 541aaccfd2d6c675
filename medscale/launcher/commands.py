"""What each launcher runs, as pure functions of the config: the torchrun line, the DeepSpeed hostfile and line,
the sbatch script. `medscale launch --dry-run` prints them; `medscale launch` runs them.

Every line starts the same trainer, `python -m medscale pretrain -c CONFIG OVERRIDES`, so that a relaunch on any
backend resumes the same run directory.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Sequence

from medscale.launcher.config import LaunchConfig

HANDLED_SIGNALS = "SIGTERM,SIGINT,SIGUSR1"  # torchrun passes these to its workers (it dies on SIGUSR1 otherwise)


def trainer_args(config_file: str, overrides: Sequence[str]) -> List[str]:
    """`-m medscale pretrain -c CONFIG OVERRIDES`: the launch.* overrides stay with the launcher."""
    kept = [o for o in overrides if not o.startswith("launch.")]
    return ["-m", "medscale", "pretrain", "-c", str(Path(config_file).resolve()), *kept]


def torchrun_command(cfg: LaunchConfig, procs: int, rdzv_id: str, trainer: Sequence[str],
                     python: str = sys.executable) -> List[str]:
    """torchrun: standalone on one node without an endpoint, else elastic c10d rendezvous (`--nnodes MIN:MAX`);
    the preemption signals forwarded to the workers, which get `launch.grace_s` to save before they are killed."""
    low, high = cfg.node_range()
    line = [python, "-m", "torch.distributed.run"]
    if high == 1 and not cfg.rdzv_endpoint:
        line.append("--standalone")
    else:
        host, port = cfg.endpoint()
        line += [f"--nnodes={low}:{high}" if low != high else f"--nnodes={low}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={host}:{port}", f"--rdzv-id={rdzv_id}"]
        if cfg.rdzv_conf:
            line.append("--rdzv-conf=" + ",".join(f"{k}={v}" for k, v in cfg.rdzv_conf.items()))
    line += [f"--nproc-per-node={procs}", f"--max-restarts={cfg.max_restarts}",
             f"--signals-to-handle={HANDLED_SIGNALS}", f"--shutdown-timeout={cfg.grace_s}"]
    return line + list(trainer)


def hosts_of(cfg: LaunchConfig) -> List[str]:
    """The hostfile's hosts: `launch.hosts`, or one placeholder name per node with --no_ssh (where the names only
    order the nodes: each node runs its own launch)."""
    return list(cfg.hosts) or [f"node-{i}" for i in range(cfg.node_range()[1])]


def hostfile(cfg: LaunchConfig, procs: int) -> str:
    """DeepSpeed's hostfile: `HOST slots=N`, one line per node."""
    return "".join(f"{host} slots={procs}\n" for host in hosts_of(cfg))


def deepspeed_command(cfg: LaunchConfig, hostfile_path: str, trainer: Sequence[str],
                      python: str = sys.executable) -> List[str]:
    """The DeepSpeed runner over the hostfile: with `launch.hosts`, node 0 starts every node over ssh; without,
    each node runs this same line with its own `--node_rank` (`--no_ssh`)."""
    host, port = cfg.endpoint()
    line = [python, "-m", "deepspeed.launcher.runner", f"--hostfile={hostfile_path}", f"--master_addr={host}",
            f"--master_port={port}"]
    if not cfg.hosts:
        line += ["--no_ssh", f"--node_rank={cfg.this_node()}"]
    module = list(trainer)
    if module[:1] == ["-m"]:
        line.append("--module")
        module = module[1:]
    return line + module


def sbatch_script(cfg: LaunchConfig, config_file: str, overrides: Sequence[str], rdzv_id: str, output: str,
                  python: str = sys.executable) -> str:
    """A batch script: one task per node, each a `medscale launch` of torchrun (c10d at the first node); the
    scheduler's warning signal (USR1, `launch.grace_s` before the end) is passed to the job step as TERM, and when
    the step is over the job is requeued if and only if the run directory says it was preempted."""
    low, high = cfg.node_range()
    port = cfg.endpoint()[1]
    medscale = [python, "-m", "medscale"]
    config = ["-c", str(Path(config_file).resolve()), *overrides]  # the node's own launch.* keys come after
    inner = shlex.join([*medscale, "launch", *config, "launch.backend=torchrun"])
    outcome = shlex.join([*medscale, "launch", *config])
    options = [f"--job-name={rdzv_id}", f"--nodes={low}-{high}" if low != high else f"--nodes={low}",
               "--ntasks-per-node=1", "--requeue", f"--signal=B:USR1@{cfg.grace_s}", "--open-mode=append",
               f"--output={output}", *cfg.slurm.sbatch]
    return "\n".join([
        "#!/bin/bash",
        *[f"#SBATCH {option}" for option in options],
        "# written by `medscale launch` (launch.backend=slurm): 0 done, 75 preempted and requeued, else failed",
        "set -u",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        "START=$(date +%s)",
        'echo "medscale: job $SLURM_JOB_ID attempt $((${SLURM_RESTART_COUNT:-0} + 1)) on $SLURM_JOB_NODELIST '
        '(rendezvous $HEAD)"',
        "forward() {  # the batch shell alone gets the warning: every rank must save",
        '  echo "medscale: $1 received: asking every rank to save (grace ' f'{cfg.grace_s}' ' s)"',
        '  scancel --signal=TERM "$SLURM_JOB_ID.0" 2>/dev/null || true',
        "}",
        "trap 'forward USR1' USR1",
        "trap 'forward TERM' TERM",
        f"srun --ntasks-per-node=1 {inner} launch.nodes=$SLURM_JOB_NUM_NODES launch.rdzv_endpoint=$HEAD:{port} "
        f"launch.rdzv_id={rdzv_id}-$SLURM_JOB_ID &",
        "STEP=$!",
        'while kill -0 "$STEP" 2>/dev/null; do wait "$STEP"; done  # a trapped signal ends `wait` early',
        'wait "$STEP"; CODE=$?',
        f'{outcome} --outcome "$CODE" --since "$START"; RESULT=$?  # the contract, from the run directory',
        'if [ "$RESULT" -eq 75 ]; then',
        "  if ! command -v scontrol >/dev/null; then",
        '    echo "medscale: preempted, but scontrol is missing here: resubmit the job to resume"; exit 75',
        "  fi",
        '  scontrol requeue "$SLURM_JOB_ID" && echo "medscale: requeued job $SLURM_JOB_ID to resume"',
        "fi",
        'exit "$RESULT"',
        ""])
