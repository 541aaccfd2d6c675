"""`medscale eval [watch RUN_DIR | on-commit]`: the evaluation command's three modes, each with its own options and
`--help` (the command line registers them with `add_parsers`, resolves the config, then calls `run_mode`); the
results folder may be `s3://` (worked on in a local copy, uploaded as results come)."""

from __future__ import annotations

import argparse
import json
from typing import Callable, List, Optional, Sequence

from medscale.core.errors import ConfigError
from medscale.core.executor import EXECUTOR_CHOICES
from medscale.eval.config import EvalConfig
from medscale.eval.registry import TASKS

MODES = ("watch", "on-commit")  # `medscale eval MODE ...`; without one, the checkpoints named are evaluated once
OVERRIDES = "Extra eval.key=value arguments override the config."


def route(argv: Sequence[str]) -> List[str]:
    """`argv` with `eval watch` / `eval on-commit` as the one command name its parser is registered under."""
    argv = list(argv)
    for i, token in enumerate(argv):
        if token.startswith("-") or (i and argv[i - 1] in ("--local_rank", "--local-rank")):
            continue
        if token == "eval" and i + 1 < len(argv) and argv[i + 1] in MODES:
            return [*argv[:i], f"eval-{argv[i + 1]}", *argv[i + 2:]]
        break
    return argv


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", nargs="+", choices=tuple(TASKS), metavar="TASK", help="among " + ", ".join(TASKS))
    p.add_argument("--datasets", nargs="+", metavar="[NAME=]PATH", help="labelled sets (npz, folder, sharded corpus)")
    p.add_argument("--out", "-o", help="results folder or s3:// URL (results.parquet, results.md, tb/, pictures/)")
    p.add_argument("--config", "-c", help="YAML config file (its eval section)")
    p.add_argument("--executor", choices=EXECUTOR_CHOICES)
    p.add_argument("--ray-address", help="an existing Ray cluster (e.g. auto)")


def add_parsers(sub, handler: Callable[[str], Callable]) -> None:
    """Register `eval` and its modes on the command line's subparsers (`sub`); `handler(mode)` is what each runs."""
    checkpoints = ("an export folder, a run directory (each complete checkpoint), local or s3://, raw (pixels) or "
                   "random:TIMM_NAME|EXPORT (random initialisation)")
    p = sub.add_parser("eval", help="evaluate backbones on downstream tasks (the Ray evaluation pool); "
                                    "`eval watch RUN_DIR` follows a training run, `eval on-commit` gates a commit",
                       usage="medscale eval [watch RUN_DIR | on-commit] [options] [eval.key=value ...]",
                       epilog=f"Modes: `medscale eval watch --help`, `medscale eval on-commit --help`. {OVERRIDES} "
                              "Exit code 1: a job failed.")
    p.add_argument("--checkpoints", nargs="+", metavar="CKPT", help=checkpoints)
    _common(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=handler("run"))

    p = sub.add_parser("eval-watch", prog="medscale eval watch", usage="medscale eval watch RUN_DIR [options] "
                       "[eval.key=value ...]", description="Evaluate each new complete checkpoint of the run "
                       "directory RUN_DIR (local or s3://) once, as it appears; a restarted watcher goes on after "
                       "the last one it evaluated.", epilog=OVERRIDES)
    p.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="baselines evaluated once beside the run's "
                   "checkpoints, e.g. raw random:TIMM_NAME")
    _common(p)
    p.add_argument("--once", action="store_true", help="evaluate what is there and stop")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between looks at the run (default 30)")
    p.set_defaults(func=handler("watch"))

    p = sub.add_parser("eval-on-commit", prog="medscale eval on-commit", usage="medscale eval on-commit [options] "
                       "[eval.key=value ...]", description="Evaluate the checkpoints, tag the results with the "
                       "commit ($MEDSCALE_COMMIT, else `git rev-parse HEAD`), compare them with the baseline's and "
                       "exit 1 on a regression: a figure that dropped by more than the tolerance and by more than "
                       "the noise (the larger half-width of the two 95% intervals).", epilog=OVERRIDES)
    p.add_argument("--checkpoints", nargs="+", metavar="CKPT", help=checkpoints)
    _common(p)
    p.add_argument("--tolerance", type=float, help="eval.tolerance: the drop allowed beyond the noise (default 0.02)")
    p.add_argument("--baseline", metavar="COMMIT", help="eval.baseline: compare with this commit (e.g. the "
                   "merge-base); default: the newest commit that passed")
    p.set_defaults(func=handler("on-commit"))


def check_arguments(mode: str, rest: List[str]) -> None:
    """The positional arguments of `mode`: RUN_DIR for watch, none otherwise (overrides aside)."""
    wanted = 1 if mode == "watch" else 0
    if len(rest) != wanted:
        usage = {"run": "medscale eval [options]", "watch": "medscale eval watch RUN_DIR [options]",
                 "on-commit": "medscale eval on-commit [options]"}[mode]
        what = ("the run directory is missing" if len(rest) < wanted else
                f"unexpected argument(s) {' '.join(rest[wanted:])}")
        raise ConfigError(f"{what}: {usage} [eval.key=value ...]")


def option_overrides(args: argparse.Namespace) -> List[str]:
    """The `eval.key=value` overrides the command-line options of any mode stand for."""
    overrides = []
    for key in ("checkpoints", "tasks", "datasets"):
        if getattr(args, key, None):
            overrides.append(f"eval.{key}=[{','.join(json.dumps(v) for v in getattr(args, key))}]")
    for key in ("out", "executor", "ray_address", "tolerance", "baseline"):
        if getattr(args, key, None) is not None:
            overrides.append(f"eval.{key}={getattr(args, key)}")
    return overrides


def run_mode(mode: str, rest: List[str], cfg: EvalConfig, args: argparse.Namespace) -> int:
    """Run one mode of `medscale eval` with the resolved `cfg` (exit code: 1 when a job failed, or on-commit found
    a regression)."""
    from medscale.eval.remote import working_out

    with working_out(cfg.out, cfg.storage_options) as (folder, publish):  # s3://: worked on here, uploaded
        shown_out, cfg.out = cfg.out, folder
        return _run_mode(mode, rest, cfg, args, publish, shown_out)


def _run_mode(mode: str, rest: List[str], cfg, args: argparse.Namespace, publish: Optional[Callable],
              shown_out: str) -> int:
    """One mode into `cfg.out` (a local folder; `publish` uploads it where `shown_out` says)."""
    if mode == "watch":
        from medscale.eval.watch import watch

        return watch(rest[0], cfg, once=args.once, interval=args.interval, after_each=publish)
    if mode == "on-commit":
        from medscale.eval.oncommit import on_commit

        report = on_commit(cfg)
        print(report.format())
        return 1 if report.regressions else 0
    from medscale.eval.pool import evaluate

    summary = evaluate(cfg)
    summary.out = shown_out
    print(json.dumps(summary.as_dict()) if args.json else summary.format())
    return 1 if summary.failed else 0
