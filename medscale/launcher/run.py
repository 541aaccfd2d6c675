"""`medscale launch`: run the trainer on this node under torchrun or the DeepSpeed launcher, or submit it as a SLURM
batch job; pass the signals this process gets to every rank; end with the exit-code contract (`outcome.py`).

    code = launch(cfg.launch, cfg.train, cfg.loader, "run.yaml", ["train.max_steps=100"])
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from medscale.core.errors import ConfigError, MedscaleError
from medscale.core.lifeline import descendants, die_with_parent, parent
from medscale.data.config import LoaderConfig
from medscale.launcher.commands import (
    deepspeed_command,
    hostfile,
    sbatch_script,
    torchrun_command,
    trainer_args,
)
from medscale.launcher.config import LaunchConfig, job_id
from medscale.launcher.outcome import verdict
from medscale.trainer.config import TrainConfig

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
KILL_AFTER_S = 30.0  # past the grace: the launcher's own shutdown has failed, the tree is killed


def _cmdline(pid: int) -> List[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def deepspeed_ranks(pid: int) -> List[int]:
    """The ranks under a DeepSpeed runner `pid`: the children of its `deepspeed.launcher.launch` process. They get a
    signal directly: the runner would die of it and orphan them, and `launch` would kill them after 30 s."""
    tree = descendants(pid)
    launchers = [p for p in tree if "deepspeed.launcher.launch" in _cmdline(p)]
    return [p for p in tree if parent(p) in launchers]


def _child_setup() -> None:
    """In the launcher's child (its own session: a terminal's Ctrl-C reaches it once, through us): SIGTERM when this
    process dies, so that even a SIGKILLed `medscale launch` lets the ranks save."""
    die_with_parent(signal.SIGTERM)


class Launch:
    """One running launcher process and the signals passed on to it."""

    def __init__(self, command: Sequence[str], backend: str, grace_s: float) -> None:
        self.backend, self.grace_s = backend, grace_s
        self.signalled_at: Optional[float] = None
        self.child = subprocess.Popen(list(command), start_new_session=True, preexec_fn=_child_setup)

    def forward(self, signum: int, frame=None) -> None:
        """torchrun handles the signals itself (`--signals-to-handle`); the DeepSpeed runner does not (it would die
        and orphan its ranks), so its ranks get the signal directly."""
        name = signal.Signals(signum).name
        targets = [self.child.pid]
        if self.backend == "deepspeed":
            targets = deepspeed_ranks(self.child.pid) or [self.child.pid, *descendants(self.child.pid)]
        print(f"medscale launch: {name} received: passed to {len(targets)} process(es); the ranks save and stop "
              f"(grace {self.grace_s:.0f} s)", file=sys.stderr, flush=True)
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        self.signalled_at = self.signalled_at or time.monotonic()

    def wait(self) -> int:
        """The launcher's exit code; past the grace after a signal the whole tree is killed."""
        previous = {sig: signal.signal(sig, self.forward) for sig in FORWARDED}
        try:
            while self.child.poll() is None:
                time.sleep(0.2)
                if self.signalled_at and time.monotonic() - self.signalled_at > self.grace_s + KILL_AFTER_S:
                    for pid in [self.child.pid, *descendants(self.child.pid)]:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.child.returncode


def launch(lc: LaunchConfig, train: TrainConfig, loader: LoaderConfig, config_file: Optional[str],
           overrides: Sequence[str], dry_run: bool = False,
           on_start: Optional[Callable[[Launch], Optional[Callable[[], None]]]] = None) -> int:
    """Run (or with `dry_run` print) the configured launch on this node; the exit-code contract's code. `on_start`
    gets the running launch (a spot-notice watcher calls its `forward(SIGUSR1)`) and may return what stops it
    (called once the launch ended)."""
    if os.environ.get("RANK"):
        raise ConfigError("medscale launch was started by a launcher (RANK is set): run `medscale pretrain` under "
                          "a launcher, or `medscale launch` alone")
    rdzv_id = lc.rdzv_id or job_id(train.run_dir, lc.rdzv_endpoint)
    if lc.backend == "slurm":
        return submit(lc, train, loader, config_file, overrides, rdzv_id, dry_run)
    from medscale.launcher.preflight import check_endpoint, preflight, procs_per_node

    trainer = trainer_args(config_file, overrides)
    procs = procs_per_node(lc)
    hosts_path = Path.home() / ".cache" / "medscale" / "launch" / rdzv_id / "hostfile"
    if lc.backend == "torchrun":
        command = torchrun_command(lc, procs, rdzv_id, trainer)
    else:
        command = deepspeed_command(lc, str(hosts_path), trainer)
    if dry_run:
        if lc.backend == "deepspeed":
            print(f"# hostfile {hosts_path}\n{hostfile(lc, procs)}# command")
        print(shlex.join(command))
        return 0
    preflight(lc, train, loader)
    if lc.rdzv_endpoint or lc.node_range()[1] > 1 or lc.backend == "deepspeed":  # (standalone torchrun: none)
        check_endpoint(lc)
    if lc.backend == "deepspeed":
        hosts_path.parent.mkdir(parents=True, exist_ok=True)
        hosts_path.write_text(hostfile(lc, procs))
    print(f"medscale launch: {shlex.join(command)}", file=sys.stderr, flush=True)
    since = time.time()
    running = Launch(command, lc.backend, lc.grace_s)
    stop = on_start(running) if on_start is not None else None
    try:
        code = running.wait()
    finally:
        if stop is not None:
            stop()
    return verdict(train.run_dir, train.storage_options, code, since)


def submit(lc: LaunchConfig, train: TrainConfig, loader: LoaderConfig, config_file: Optional[str],
           overrides: Sequence[str], rdzv_id: str, dry_run: bool) -> int:
    """Write the sbatch script and submit it (`sbatch --parsable`); with `dry_run` print it."""
    if config_file is None:
        raise ConfigError("launch.backend=slurm needs the run's config file (-c RUN.yaml): every node reads it")
    script_path = Path(lc.slurm.script or f"{rdzv_id}.sbatch").resolve()
    output = str(Path(lc.slurm.output or f"{rdzv_id}-%j.log").resolve())
    script = sbatch_script(lc, config_file, overrides, rdzv_id, output)
    if dry_run:
        print(script, end="")
        return 0
    from medscale.launcher.preflight import preflight

    preflight(lc, train, loader)
    if shutil.which("sbatch") is None:
        raise ConfigError("launch.backend=slurm: `sbatch` is not on this machine's PATH: run on a SLURM login node, "
                          "or choose launch.backend=torchrun")
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(script)
    done = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise MedscaleError(f"sbatch {script_path} failed: {done.stderr.strip() or done.stdout.strip()}")
    job = done.stdout.strip().split(";")[0]
    print(f"submitted SLURM job {job}: {script_path}\n  log: {output.replace('%j', job)}\n  the job requeues "
          "itself when preempted; `scontrol show job " + job + "` shows it", flush=True)
    return 0
