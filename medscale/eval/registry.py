"""The one registry of evaluation tasks, torch-free so that the command line and config validation can list the
names without importing torch: name -> "module:Class" of an `EvalTask`; `create_task` imports and builds it."""

from __future__ import annotations

import importlib
from typing import Any

TASKS = {
    "retrieval": "medscale.eval.retrieval:RetrievalTask",
    "knn": "medscale.eval.retrieval:KnnTask",
    "linear_probe": "medscale.eval.probe:LinearProbeTask",
    "finetune": "medscale.eval.probe:FinetuneTask",
    "mlp": "medscale.eval.mlp:MlpTask",
    "dann": "medscale.eval.mlp:DannTask",
}


def create_task(name: str, cfg: Any) -> Any:
    """`create_task("retrieval", eval_cfg)`: the task registered as `name`, with its options from `cfg`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)
