"""The `medscale` command line: one subcommand per stage."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from medscale import __version__
from medscale.config import SECTIONS, MedscaleConfig, load, resolve_config, root_config
from medscale.core.config import reference, to_yaml
from medscale.core.errors import ConfigError, MedscaleError
from medscale.core.executor import EXECUTOR_CHOICES
from medscale.core.faults import describe, fault_kind, stopped, traceback_text
from medscale.core.logs import setup_logging
from medscale.data.config import AUGMENTS
from medscale.dedup.strategies import STRATEGIES
from medscale.eval import command as eval_command
from medscale.hashing.hashes import HASH_NAMES
from medscale.launcher.config import BACKENDS

_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def split_overrides(args: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(positional inputs, `section.key=value` overrides): an override starts with a config section name. An
    argument shaped like an override of an unknown section (`shrad.bit_depth=16`) whose value is no existing path
    is an error naming the sections, not an input."""
    inputs, overrides = [], []
    for a in args:
        head, _, value = a.partition("=")
        if "=" in a and head.split(".", 1)[0] in SECTIONS and "." in head:
            overrides.append(a)
        elif _OVERRIDE.match(a) and "://" not in value and not os.path.exists(value):
            section = head.split(".", 1)[0]
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f"; did you mean '{close[0]}{a[len(section):]}'?" if close else ""
            raise ConfigError(f"argument '{a}' looks like a config override, but '{section}' is not a config "
                              f"section (sections: {', '.join(SECTIONS)}){hint} An input named with a dot needs "
                              "an existing path after '='.")
        else:
            inputs.append(a)
    return inputs, overrides


def _overrides_only(extra: Sequence[str]) -> List[str]:
    """The `section.key=value` overrides of a command that takes no other extra arguments."""
    rest, overrides = split_overrides(extra)
    if rest:
        raise ConfigError(f"unexpected argument(s) {' '.join(rest)}: this command takes section.key=value "
                          "overrides after its options")
    return overrides


def _slice_reducer(cfg: MedscaleConfig):
    """The reducer `shard.reduce` names, from dedup, handed to the sharding service (None when not reducing)."""
    from medscale.dedup.volume import slice_reducer

    return slice_reducer(cfg.shard.reduce, cfg.shard.reduce_threshold) if cfg.shard.reduce else None


def _shard(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.data.service import run_sharding

    inputs, overrides = split_overrides(list(args.inputs) + extra)
    if args.output:
        overrides.append(f"shard.output={args.output}")
    if args.shard_size is not None:
        overrides.append(f"shard.shard_size={args.shard_size}")
    if args.executor:
        overrides.append(f"shard.executor={args.executor}")
    if args.ray_address:
        overrides.append(f"shard.ray_address={args.ray_address}")
    cfg = load(args.config, overrides)
    if inputs:
        cfg.shard.inputs = inputs
    summary = run_sharding(cfg.shard, _slice_reducer(cfg), force=args.force)
    print(json.dumps(summary.as_dict()) if args.json else summary.format())
    return 0


def _demo(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.demo import default_output
    from medscale.pipeline import DEMO_CONFIG, run_demo

    overrides = _overrides_only(extra)
    config_file = Path(args.config) if args.config else DEMO_CONFIG
    cfg = load(config_file, overrides)
    run_demo(cfg, Path(args.output or default_output()), config_file, overrides, ranks=args.ranks)
    return 0


def _dedup(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.dedup.contamination import run_contamination
    from medscale.dedup.rehash import rehash_manifest
    from medscale.dedup.service import run_dedup

    overrides = _overrides_only(extra)
    for key in ("strategy", "hash", "threshold", "every_n", "embeddings", "backbone", "eps", "verify", "executor",
                "ray_address"):  # each flag sets the dedup key of the same name (the check's own rule with --against)
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"dedup.{'against_' if args.against and key in ('threshold', 'verify') else ''}{key}="
                             f"{value}")
    for flag in ("exclude", "dry_run"):
        if getattr(args, flag):
            overrides.append(f"dedup.{flag}=true")
    cfg = load(args.config, overrides).dedup
    if args.against:
        cfg.against = list(args.against)
    if args.rehash:
        print(f"hashed {rehash_manifest(args.url, cfg, args.force)} samples from the shards of {args.url}")
    summary = (run_contamination(args.url, cfg, args.force) if cfg.against else
               run_dedup(args.url, cfg, args.force))
    print(json.dumps(summary.as_dict()) if args.json else summary.format())
    if args.write_kept:
        from medscale.dedup.compact import write_kept

        compacted = write_kept(args.url, args.write_kept, cfg, force=args.force)
        print(json.dumps(compacted.as_dict()) if args.json else compacted.format())
    return 0


def _pretrain(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.trainer.preemption import PreemptionFlag

    flag = PreemptionFlag().install()  # first: a launcher may pass on a preemption while this rank still starts
    from medscale.core.runs import PREEMPTED_EXIT
    from medscale.trainer.engine import Preempted, pretrain

    cfg = load(args.config, _overrides_only(extra))
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 speaks for the job; the others only warn
        logging.getLogger().setLevel(logging.WARNING)
    try:
        summary = pretrain(cfg.train, cfg.loader, force=args.force, flag=flag)
    except Preempted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"medscale: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary.as_dict()) if args.json else summary.format())
    return 0


def _launch(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.launcher.run import launch

    overrides = _overrides_only(extra)
    cfg = load(args.config, overrides)
    if args.outcome is not None:
        from medscale.launcher.outcome import verdict

        return verdict(cfg.train.run_dir, cfg.train.storage_options, args.outcome, args.since or 0.0)
    config_file = resolve_config(args.config)  # a preset's name: its file, which every rank reads
    return launch(cfg.launch, cfg.train, cfg.loader, str(config_file) if config_file else None, overrides,
                  dry_run=args.dry_run, on_start=_watch_notices(cfg.cluster))


def _watch_notices(cluster) -> Optional[Callable]:
    """With `cluster.spot_notice` on: a watcher that passes a spot interruption notice to the running launch as
    SIGUSR1 (the ranks save and exit 75 before the kill)."""
    if cluster.spot_notice is None:
        return None
    from medscale.cluster.notice import NoticeWatcher

    def start(running) -> Callable[[], None]:
        watcher = NoticeWatcher(cluster.spot_notice, cluster.notice_interval_s,
                                lambda what: running.forward(signal.SIGUSR1), cluster.metadata_url)
        watcher.start()
        return watcher.stop  # no polling on after the launch ended
    return start


def _cluster(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.cluster.command import cluster_command

    cfg = load(args.config, _overrides_only(extra))
    return cluster_command(args.action, {name: getattr(cfg, name) for name in SECTIONS}, args.dry_run)


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: helpers are stopped, nothing half-written is committed


def _eval(mode: str) -> Callable[[argparse.Namespace, List[str]], int]:
    """The handler of `medscale eval` in `mode` (run, watch, on-commit)."""
    def run(args: argparse.Namespace, extra: List[str]) -> int:
        from medscale.core.lifeline import reap_when_gone

        reap_when_gone()  # even a SIGKILLed evaluation leaves no pool workers, forkserver or local Ray behind
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        rest, overrides = split_overrides(extra)
        eval_command.check_arguments(mode, rest)
        cfg = load(args.config, eval_command.option_overrides(args) + overrides).eval
        return eval_command.run_mode(mode, rest, cfg, args)

    return run


def _preview(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.data.loaders import create_loader
    from medscale.data.preview import batch_grid

    overrides = _overrides_only(extra)
    if args.augment:
        overrides.append(f"loader.augment={args.augment}")
    cfg = load(args.config, overrides).loader
    cfg.num_workers = 0
    batch = next(iter(create_loader(args.url, cfg, rank=0, world_size=1)))
    Path(args.output).write_bytes(batch_grid(batch, args.samples))
    print(f"{min(args.samples, len(batch['key']))} samples of {args.url} as the trainer sees them -> {args.output}")
    return 0


def _hf_export(args: argparse.Namespace, extra: List[str]) -> int:
    from medscale.core.card import save_for_timm_hub

    out = save_for_timm_hub(args.export, args.out)
    print(f"{args.export} -> {out}: timm.create_model('local-dir:{out.resolve()}', pretrained=True)")
    return 0


def _config(args: argparse.Namespace, extra: List[str]) -> int:
    print(reference(root_config()) if args.reference else to_yaml(load(args.config, _overrides_only(extra))), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="medscale", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"medscale {__version__}")
    parser.add_argument("--local_rank", "--local-rank", type=int, dest="launcher_local_rank",
                        help="set by the deepspeed launcher before the command (also read from LOCAL_RANK)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shard", help="turn DICOM/NIfTI/PNG/JPEG/npz inputs into WebDataset shards + Parquet manifest",
                       epilog="Extra arguments of the form section.key=value override the config, "
                              "e.g. shard.bit_depth=16 shard.max_size=256.")
    p.add_argument("inputs", nargs="*", help="files, folders or URLs (s3://...); NAME=PATH names the source")
    p.add_argument("--output", "-o", help="output folder or URL (s3://bucket/prefix)")
    p.add_argument("--shard-size", type=int, help="samples per shard")
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("--executor", choices=EXECUTOR_CHOICES,
                   help="auto (default: a local pool for small work, Ray for large), ray, pool or local (in-process)")
    p.add_argument("--ray-address", help="join an existing Ray cluster (e.g. auto)")
    p.add_argument("--force", action="store_true", help="break another run's lock on the output (if it is dead)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_shard)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled real corpus: shard, reduce, exclude the "
                                    "test splits, pre-train (torchrun, DeepSpeed ZeRO-2), evaluate as it trains",
                       epilog="Extra section.key=value arguments override the config, e.g. train.max_steps=100.")
    p.add_argument("--output", "-o", help="output folder (default $MEDSCALE_DEMO_OUTPUT or outputs/demo)")
    p.add_argument("--config", "-c", default=None, help="YAML config (default: medscale/demo_data/demo.yaml)")
    p.add_argument("--ranks", type=int, default=2, help="training processes under torchrun (default 2)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("dedup", help="reduce a sharded corpus (duplicates recorded in its manifest) or check "
                                     "evaluation sets for contamination",
                       epilog="Strategies: " + "; ".join(f"{name}: {line}" for name, line in
                                                         STRATEGIES.summaries().items())
                              + ". Extra dedup.key=value arguments override the config.")
    p.add_argument("url", help="a sharding output (folder or s3://...)")
    p.add_argument("--strategy", "-s", choices=tuple(STRATEGIES))
    p.add_argument("--hash", choices=HASH_NAMES, help="which 64-bit hash (default dhash)")
    p.add_argument("--threshold", "-k", type=int, help="Hamming distance for near-duplicates (default 6; with "
                                                       "--against, 3)")
    p.add_argument("--verify", help="also require a summed distance on other hashes, e.g. 'dhash+ahash<=16' "
                                    "(with --against, default 'ahash+phash<=6')")
    p.add_argument("--every-n", type=int, help="every-n: keep every n-th slice of a volume")
    p.add_argument("--embeddings", help="embedding: Parquet file with key, embedding")
    p.add_argument("--backbone", help="embedding: an exported backbone folder (card.json + backbone.safetensors)")
    p.add_argument("--eps", type=float, help="embedding: duplicates when cosine similarity > 1 - eps")
    p.add_argument("--against", action="append", metavar="SOURCE",
                   help="contamination check: an evaluation set (npz, folder, file; NAME=PATH names it); repeat "
                        "the flag for several")
    p.add_argument("--exclude", action="store_true", help="with --against: mark matching corpus samples excluded")
    p.add_argument("--write-kept", metavar="OUTPUT", help="then write new shards holding only the kept samples")
    p.add_argument("--rehash", action="store_true", help="first compute the manifest's hashes from the shards")
    p.add_argument("--dry-run", action="store_true", help="report only; leave the manifest unchanged")
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("--executor", choices=EXECUTOR_CHOICES)
    p.add_argument("--ray-address")
    p.add_argument("--force", action="store_true", help="break another run's lock on the output (if it is dead)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_dedup)

    p = sub.add_parser("pretrain", help="pre-train a backbone on a sharded corpus (DeepSpeed ZeRO; run it under "
                                        "torchrun or the deepspeed launcher for several ranks)",
                       epilog="Extra section.key=value arguments override the config, e.g. train.data=CORPUS "
                              "train.run_dir=runs/x train.zero_stage=2. Exit code 75: preempted after a save "
                              "(rerun to resume).")
    p.add_argument("--config", "-c", help="YAML config file (e.g. configs/mae-tiny.yaml)")
    p.add_argument("--local_rank", "--local-rank", type=int, help="set by the deepspeed launcher (also read from "
                                                                  "LOCAL_RANK)")
    p.add_argument("--force", action="store_true", help="break another trainer's lease on the run directory (if "
                                                        "it is dead)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("launch", help="run pre-training on this node under torchrun or the deepspeed launcher, or "
                                      "submit it to SLURM, from the run's config and its launch section",
                       epilog="Backends: " + ", ".join(BACKENDS) + ". Extra section.key=value arguments override "
                              "the config, e.g. launch.nodes=1:4 launch.rdzv_endpoint=node0:29400. Exit codes: 0 "
                              "done, 75 preempted after a save (rerun to resume), anything else a failure.")
    p.add_argument("--config", "-c", help="the run's YAML config (train, loader and launch sections)")
    p.add_argument("--dry-run", action="store_true", help="print what would run (command line, hostfile or sbatch "
                                                          "script) and stop")
    p.add_argument("--outcome", type=int, metavar="CODE", help="instead of launching: the exit-code contract's "
                                                                "verdict on a finished launcher's CODE (the SLURM "
                                                                "script's last step)")
    p.add_argument("--since", type=float, metavar="EPOCH_S", help="with --outcome: when that launch started")
    p.set_defaults(func=_launch)

    p = sub.add_parser("cluster", help="cloud runs: a SkyPilot managed spot job of the run, a Ray cluster for the "
                                       "data and evaluation services",
                       epilog="spot: write the SkyPilot task (cluster.spot.task) and `sky jobs launch` it. ray: write "
                              "the Ray cluster file (cluster.ray.file). up | down | status: `ray up | down | status` "
                              "on that file. Extra section.key=value arguments override the config.")
    p.add_argument("action", choices=("spot", "ray", "up", "down", "status"))
    p.add_argument("--config", "-c", help="the run's YAML config (its cluster section, and the run for spot)")
    p.add_argument("--dry-run", action="store_true", help="write and print the file, check it, submit nothing")
    p.set_defaults(func=_cluster)

    eval_command.add_parsers(sub, _eval)

    p = sub.add_parser("preview", help="write a PNG of one augmented batch, as a trainer would see it",
                       epilog="Extra loader.key=value arguments override the config, e.g. loader.image_size=128.")
    p.add_argument("url", help="a sharding output (folder or s3://...)")
    p.add_argument("--augment", choices=AUGMENTS)
    p.add_argument("--samples", "-n", type=int, default=8)
    p.add_argument("--output", "-o", default="preview.png")
    p.add_argument("--config", "-c", help="YAML config file")
    p.set_defaults(func=_preview)

    p = sub.add_parser("hf-export", help="write an export as a Hugging Face hub folder that timm loads")
    p.add_argument("export", help="an export folder (card.json + backbone.safetensors) or a run directory")
    p.add_argument("out", help="the folder to write (config.json, model.safetensors, card.json)")
    p.set_defaults(func=_hf_export)
    p = sub.add_parser("config", help="print the resolved config (--reference: every key, Markdown)")
    p.add_argument("--config", "-c", default=None)
    p.add_argument("--reference", action="store_true",
                   help="print the configuration reference instead: every key, its type, default and meaning")
    p.set_defaults(func=_config)
    sub.metavar = "{" + ",".join(name for name in sub.choices if not name.startswith("eval-")) + "}"  # eval's modes
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `medscale` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(eval_command.route(sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbose, getattr(args, "command", None))
    bad = [e for e in extra if e.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        return args.func(args, extra)
    except MedscaleError as exc:
        if exc.rank is None or exc.rank == int(os.environ.get("RANK", "0")):  # the rank that holds the cause says it
            print(f"medscale: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medscale: interrupted; nothing committed is lost: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # storage faults (disk, network) and bugs: one line here, the traceback in a log file
        kind = fault_kind(exc)
        print(f"medscale: error: {stopped(f'medscale {args.command}', kind, describe(exc), traceback_text(exc))}",
              file=sys.stderr)
        return 2 if kind else 1


if __name__ == "__main__":
    sys.exit(main())
