"""The one registry of evaluation tasks, torch-free so that the command line and config validation can list the
names and check each task's section without importing torch: name -> "module:Class" of an `EvalTask`, with its
options dataclass (its `eval.NAME` section); `create_task` imports and builds it. Another package adds one with
`register_task` or the entry-point group `medscale.tasks`; its class's `Options` is its section."""

from __future__ import annotations

from typing import Any, Optional

from medscale.core.config import with_sections
from medscale.core.registry import Registry
from medscale.eval.config import EvalConfig

TASKS = Registry("task", "medscale.tasks", {
    "retrieval": "medscale.eval.retrieval:RetrievalTask",
    "knn": "medscale.eval.retrieval:KnnTask",
    "linear_probe": "medscale.eval.probe:LinearProbeTask",
    "finetune": "medscale.eval.probe:FinetuneTask",
    "mlp": "medscale.eval.mlp:MlpTask",
    "dann": "medscale.eval.mlp:DannTask",
}, options={
    "retrieval": "medscale.eval.options:RetrievalOptions",
    "knn": "medscale.eval.options:KnnOptions",
    "linear_probe": "medscale.eval.options:LinearProbeOptions",
    "finetune": "medscale.eval.options:FinetuneOptions",
    "mlp": "medscale.eval.options:MlpOptions",
    "dann": "medscale.eval.options:DannOptions",
})
register_task = TASKS.register


def eval_config_class() -> type:
    """`EvalConfig` with a section per registered task that has options (`eval.knn`, `eval.dann`, ...)."""
    return with_sections(EvalConfig, TASKS, "eval")


def eval_config(**values: Any) -> EvalConfig:
    """An `eval` section with every task's section, `values` set (`eval_config(bootstrap=200)`)."""
    return eval_config_class()(**values)


def task_options(name: str, cfg: Any) -> Any:
    """The options of task `name` in `cfg` (its section; the defaults where `cfg` lacks it; None: it has none)."""
    options_class = TASKS.options(name)
    if options_class is None:
        return None
    found = getattr(cfg, name, None)
    return found if found is not None else options_class()


def target_of(name: str, cfg: Any) -> Optional[str]:
    """The target domain task `name` adapts to: its options' `target` (DANN's), or None."""
    return getattr(task_options(name, cfg), "target", None)


def create_task(name: str, cfg: Any) -> Any:
    """`create_task("retrieval", eval_cfg)`: the task registered as `name`, built from its own options
    (`cfg.retrieval`), the seed and the bootstrap's resamples."""
    task_class = TASKS.load(name)
    return task_class(task_options(name, cfg), cfg.seed, cfg.bootstrap)
