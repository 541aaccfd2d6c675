"""The exported-backbone contract: `DIR/backbone.safetensors` + `DIR/card.json`, loadable with plain timm.

card.json: `{"model": timm name, "kwargs": {...}, "image_size": int, "in_chans": int, "mean": [...], "std": [...],
"step": int, "manifest_digest": str}`. `timm.create_model(model, pretrained=False, **kwargs)` then
`load_state_dict(safetensors.torch.load_file(...))` restores it with no medscale import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

from medscale.core.errors import InputError
from medscale.core.storage import file_mode

CARD, WEIGHTS = "card.json", "backbone.safetensors"
REQUIRED = ("model", "image_size", "mean", "std")


def save_backbone(model, directory: str | Path, card: Dict[str, Any]) -> Path:
    """Write `model`'s weights (safetensors) and `card` (JSON) into `directory`."""
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise ValueError(f"card is missing {missing}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(directory / WEIGHTS))
    os.chmod(directory / WEIGHTS, file_mode())  # safetensors creates it owner-only; the umask decides, as elsewhere
    (directory / CARD).write_text(json.dumps(card, indent=1))
    return directory


def load_backbone(directory: str | Path) -> Tuple[Any, Dict[str, Any]]:
    """(timm model in eval mode with the exported weights, its card); clear errors for a wrong folder."""
    import timm
    from safetensors.torch import load_file

    directory = Path(directory)
    card_path, weights = directory / CARD, directory / WEIGHTS
    if not card_path.is_file() or not weights.is_file():
        raise InputError(f"{directory}: not an exported backbone (expected {CARD} and {WEIGHTS}); pass the "
                         "`export/` folder of a medscale checkpoint")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{card_path}: not valid JSON ({exc})") from exc
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise InputError(f"{card_path}: missing key(s) {missing}")
    model = timm.create_model(card["model"], pretrained=False, **card.get("kwargs", {}))
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), card
