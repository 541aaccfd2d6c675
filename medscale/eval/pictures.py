"""Pictures people would rather look at than tables: each task's metrics against the training step (PNG), the
baselines as dashed lines."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence


def metric_against_step(rows: Sequence[Dict[str, Any]], folder: Path) -> List[Path]:
    """One PNG per task (`folder/TASK-vs-step.png`) where some checkpoint has a step: a panel per dataset, a line
    per metric over the checkpoints' steps, each baseline's value dashed across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_task: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    for task, task_rows in sorted(by_task.items()):
        stepped = [r for r in task_rows if r["kind"] == "export" and r["step"] is not None]
        if not stepped:
            continue
        datasets = sorted({r["dataset"] for r in task_rows})
        fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 3.6), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            mine = [r for r in stepped if r["dataset"] == dataset]
            for i, metric in enumerate(sorted({r["metric"] for r in mine})):
                points = sorted((r["step"], r["value"]) for r in mine if r["metric"] == metric)
                colour = f"C{i % 10}"
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=colour, label=metric)
                for j, base in enumerate(sorted({r["checkpoint"] for r in task_rows if r["kind"] != "export"})):
                    values = [r["value"] for r in task_rows if r["checkpoint"] == base and r["dataset"] == dataset
                              and r["metric"] == metric]
                    if values:
                        ax.axhline(values[-1], color=colour, linestyle=("--", ":", "-.")[j % 3], linewidth=0.8,
                                   label=f"{metric} ({base})")
            ax.set_title(f"{task} on {dataset}")
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside
        fig.tight_layout()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{task}-vs-step.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")  # the legends beside the panels included
        plt.close(fig)
        written.append(path)
    return written
