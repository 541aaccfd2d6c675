"""Each rank's own file in a checkpoint, `rng-rank{R}.pt` (`core/runs.py`): its RNG states and the method's
per-rank state, tensors only."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch


def save_rng(path: Path, mask_generator: torch.Generator, method_state: Optional[Dict[str, torch.Tensor]] = None
             ) -> None:
    """This rank's RNG states (the method's own generator and torch's default one) and the method's per-rank state
    (tensors only)."""
    torch.save({"mask_generator": mask_generator.get_state(), "torch": torch.get_rng_state(),
                "method": dict(method_state or {})}, path)


def load_rng(path: Path, mask_generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Restore the RNG states `save_rng` wrote and return the method's per-rank state (weights_only: nothing but
    tensors is unpickled)."""
    state = torch.load(path, weights_only=True)
    mask_generator.set_state(state["mask_generator"])
    torch.set_rng_state(state["torch"])
    return state.get("method", {})
