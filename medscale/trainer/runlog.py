"""What people look at during a run (rank 0 only): a progress bar, TensorBoard scalars and images, JSON lines,
reconstruction grids as PNG files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from medscale.core import runs as ck

STEP_EVENTS = ("scalars", "checkpoint")  # log lines that describe a step's results (forgotten when it is redone)


class RunLog:
    """Rank 0 writes; other ranks' calls do nothing. A run that goes on from `start_step` first forgets what an
    abandoned attempt logged after it (each step is in the log, TensorBoard and the pictures once)."""

    def __init__(self, run_dir: Path, active: bool, progress: bool, start_step: int, max_steps: int) -> None:
        self.active, self.run_dir = active, Path(run_dir)
        self._writer = self._bar = None
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        forget_after(self.run_dir, start_step)
        # TensorBoard's own mark: readers drop earlier files' events from this step on
        self._writer = SummaryWriter(str(self.run_dir / ck.TB), purge_step=start_step + 1)
        self._bar = tqdm(total=max_steps, initial=start_step, desc="pretrain", unit="step", disable=not progress)

    def event(self, kind: str, **fields: Any) -> None:
        """One JSON line in `log.jsonl`."""
        if self.active:
            with open(self.run_dir / ck.LOG, "a") as fh:
                fh.write(json.dumps({"event": kind, "time": time.time(), **fields}, default=str) + "\n")

    def progress(self, step: int, loss: float) -> None:
        """Advance the bar to `step`."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """TensorBoard scalars against the global step, and the same as a JSON line."""
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()
            self.event("scalars", step=step, **values)

    def picture(self, step: int, rows: List[torch.Tensor], tag: str = "reconstruction",
                names: Sequence[str] = ()) -> None:
        """A grid of `rows`, each `[N, C, H, W]` normalised as the loader does (shown de-normalised, every tile
        scaled up to at least 96 px), each row named on its left (`names`, else "view 1"...), to TensorBoard
        under `tag` and to PNG."""
        if self._writer is None:
            return
        import numpy as np
        import torch.nn.functional as F
        from PIL import Image, ImageDraw
        from torchvision.utils import make_grid

        from medscale.data.augment import IMAGENET_MEAN, IMAGENET_STD

        side = rows[0].shape[-1] * max(1, -(-96 // rows[0].shape[-1]))  # an integer scale: pixels stay square
        images = torch.cat([F.interpolate(r, size=(side, side), mode="nearest") for r in rows])
        c = images.shape[1]
        mean, std = (torch.tensor(v[:c]).view(1, c, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        grid = make_grid((images * std + mean).clamp(0, 1), nrow=rows[0].shape[0], padding=4, pad_value=1.0)
        tiles = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        margin = 110
        sheet = Image.new("RGB", (tiles.width + margin, tiles.height), "white")
        sheet.paste(tiles, (margin, 0))
        draw = ImageDraw.Draw(sheet)
        for i in range(len(rows)):
            name = names[i] if i < len(names) else f"view {i + 1}"
            draw.text((6, 4 + i * (side + 4) + side // 2 - 6), name, fill="black")
        self._writer.add_image(tag, np.asarray(sheet), step, dataformats="HWC")
        folder = self.run_dir / ck.IMAGES
        folder.mkdir(exist_ok=True)
        sheet.save(folder / f"step-{step:08d}.png")

    def close(self) -> None:
        """Flush and close; draw the loss curve (`loss.png`) from the log."""
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
            loss_curve(self.run_dir / ck.LOG, self.run_dir / ck.LOSS_CURVE)


def forget_after(run_dir: Path, step: int) -> None:
    """Remove what an abandoned attempt logged after `step` (the step a run goes on from): its step lines in
    `log.jsonl` (events that tell what happened, such as a preemption or a start, stay) and its pictures."""
    log = run_dir / ck.LOG
    if log.exists():
        lines = log.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not line.strip() or not _after(json.loads(line), step)]
        if len(kept) != len(lines):
            tmp = log.with_name(f".{log.name}.tmp")
            tmp.write_text("".join(kept))
            tmp.replace(log)
    for picture in (run_dir / ck.IMAGES).glob("step-*.png"):
        if int(picture.stem.split("-", 1)[1]) > step:
            picture.unlink()


def _after(event: Dict[str, Any], step: int) -> bool:
    return event.get("event") in STEP_EVENTS and int(event.get("step", 0)) > step


def loss_curve(log: Path, path: Path) -> None:
    """The training loss (and lr) against the global step, from `log.jsonl`, as a PNG."""
    points = sorted({p["step"]: p for p in ck.read_log(log.parent) if p.get("event") == "scalars"}.values(),
                    key=lambda p: p["step"])
    if len(points) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([p["step"] for p in points], [p["train/loss"] for p in points], color="C0")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="C0")
    ax.grid(alpha=0.3)
    lr = ax.twinx()
    lr.plot([p["step"] for p in points], [p["train/lr"] for p in points], color="C1", linewidth=0.8)
    lr.set_ylabel("lr", color="C1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
