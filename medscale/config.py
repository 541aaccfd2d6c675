"""The root config of a run: one section per stage, each owned by its stage; what the command line loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

from medscale.cluster.config import ClusterConfig
from medscale.core.config import check, extended, load_config, with_sections
from medscale.core.errors import ConfigError
from medscale.data.config import LoaderConfig, ShardConfig
from medscale.dedup.config import DedupConfig
from medscale.dedup.strategies import STRATEGIES
from medscale.dedup.volume import SLICE_REDUCERS
from medscale.eval.config import EvalConfig
from medscale.eval.registry import TASKS, eval_config_class
from medscale.launcher.config import LaunchConfig
from medscale.trainer.config import TrainConfig
from medscale.trainer.registry import METHODS, train_config_class


@dataclass
class MedscaleConfig:
    """One run; each stage reads its own section."""

    shard: ShardConfig = field(default_factory=ShardConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self, origin: str) -> None:
        """Each section's checks, then those that span sections (`shard.reduce` names a reducer of dedup's)."""
        self.shard.validate(origin)
        check(self.shard.reduce is None or self.shard.reduce in SLICE_REDUCERS, origin, "shard.reduce",
              "null or " + " | ".join(SLICE_REDUCERS), self.shard.reduce)
        self.dedup.validate(origin)
        self.loader.validate(origin)
        self.train.validate(origin, tuple(METHODS))
        self.eval.validate(origin, tuple(TASKS))
        self.launch.validate(origin)
        self.cluster.validate(origin)


SECTIONS = tuple(MedscaleConfig.__dataclass_fields__)


def root_config() -> type:
    """`MedscaleConfig` whose `train`, `eval` and `dedup` sections hold the own section of every registered method,
    task and strategy that has options (`train.mae`, `eval.knn`, a plugin's `train.mymethod`): what configs are
    loaded, checked and listed against."""
    return extended(MedscaleConfig, (("dedup", with_sections(DedupConfig, STRATEGIES, "dedup")),
                                     ("train", train_config_class()), ("eval", eval_config_class())))


PRESETS = Path(__file__).parent / "presets"  # the bundled configs (`configs/` in a checkout), loadable by name


def preset_names() -> Tuple[str, ...]:
    """The bundled presets' names (`mae-tiny`, ...)."""
    return tuple(sorted(p.stem for p in PRESETS.glob("*.yaml")))


def resolve_config(path: Optional[str | Path]) -> Optional[str | Path]:
    """`path` when it is a file (or `-`, standard input); a bundled preset's file for its name (`mae-tiny`,
    `mae-tiny.yaml`, `configs/mae-tiny.yaml` from anywhere); else a ConfigError naming the presets."""
    if path is None or str(path) == "-" or Path(path).is_file():
        return path
    name = Path(path).name.removesuffix(".yaml")
    if (PRESETS / f"{name}.yaml").is_file():
        return PRESETS / f"{name}.yaml"
    raise ConfigError(f"config file {path} does not exist; pass a YAML file, or a bundled preset by name: "
                      f"{', '.join(preset_names())}")


def load(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> MedscaleConfig:
    """Defaults <- YAML file at `path` (or a bundled preset's name) <- `section.key=value` overrides; validated, or
    ConfigError naming the key."""
    return load_config(root_config(), resolve_config(path), overrides)
