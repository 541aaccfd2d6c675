"""The one registry of evaluation tasks, torch-free so that the command line and config validation can list the
names without importing torch: name -> "module:Class" of an `EvalTask`; `create_task` imports and builds it.
Another package adds one with `register_task` or the entry-point group `medscale.tasks`."""

from __future__ import annotations

from typing import Any

from medscale.core.registry import Registry

TASKS = Registry("task", "medscale.tasks", {
    "retrieval": "medscale.eval.retrieval:RetrievalTask",
    "knn": "medscale.eval.retrieval:KnnTask",
    "linear_probe": "medscale.eval.probe:LinearProbeTask",
    "finetune": "medscale.eval.probe:FinetuneTask",
    "mlp": "medscale.eval.mlp:MlpTask",
    "dann": "medscale.eval.mlp:DannTask",
})
register_task = TASKS.register


def create_task(name: str, cfg: Any) -> Any:
    """`create_task("retrieval", eval_cfg)`: the task registered as `name`, with its options from `cfg`."""
    return TASKS.load(name)(cfg)
