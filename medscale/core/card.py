"""The exported-backbone contract: `DIR/backbone.safetensors` + `DIR/card.json`, loadable with plain timm.

card.json: `{"model": timm name, "kwargs": {...}, "image_size": int, "in_chans": int, "mean": [...], "std": [...],
"step": int, "method": str, "data": the corpus (absolute path or URL), "manifest_digest": str, "format_version": 1}`.
`timm.create_model(model, pretrained=False, **kwargs)` then `load_state_dict(safetensors.torch.load_file(...))`
restores it with no medscale import. `read_card` / `write_card` are the one reader and writer (torch-free).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from medscale.core.errors import InputError
from medscale.core.formats import FORMAT_KEY, check_format
from medscale.core.storage import file_mode

CARD, WEIGHTS = "card.json", "backbone.safetensors"
REQUIRED = ("model", "image_size", "mean", "std")
CARD_FORMAT = 1  # the card format this medscale writes and reads up to


@dataclass(frozen=True)
class Card:
    """What `card.json` holds: how to rebuild the exported backbone and feed it, and where it came from."""

    model: str  # a timm model name
    image_size: int
    mean: List[float]
    std: List[float]
    kwargs: Dict[str, Any] = field(default_factory=dict)  # `timm.create_model` keyword arguments
    in_chans: int = 3
    step: Optional[int] = None
    method: Optional[str] = None
    data: Optional[str] = None  # the corpus trained on
    manifest_digest: Optional[str] = None
    format_version: int = CARD_FORMAT
    extra: Dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    def to_json(self) -> Dict[str, Any]:
        """The card as `card.json` holds it (None fields left out)."""
        known = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in known.items() if v is not None}, **self.extra}

    @classmethod
    def from_json(cls, data: Dict[str, Any], where: str = CARD) -> "Card":
        """A card from `card.json`'s object; an InputError naming `where` for a missing key or a newer format."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: not a card (a JSON object expected)")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise InputError(f"{where}: missing key(s) {missing}; export the backbone again with medscale")
        check_format(data.get(FORMAT_KEY), CARD_FORMAT, where, "export card")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


def read_card(directory: str | Path) -> Card:
    """The card of the export folder `directory` (InputError when it is not one, or the card is damaged)."""
    path = Path(directory) / CARD
    if not path.is_file():
        raise InputError(f"{directory}: not an exported backbone (no {CARD}); pass the `export/` folder of a medscale "
                         "checkpoint")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    return Card.from_json(data, str(path))


def write_card(directory: str | Path, card: Card) -> Path:
    """Write `card` as `directory/card.json` (readable as the umask says)."""
    path = Path(directory) / CARD
    path.write_text(json.dumps(card.to_json(), indent=1))
    return path


def save_backbone(model, directory: str | Path, card: Card) -> Path:
    """Write `model`'s weights (safetensors) and `card` (JSON) into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(directory / WEIGHTS))
    os.chmod(directory / WEIGHTS, file_mode())  # safetensors creates it owner-only; the umask decides, as elsewhere
    write_card(directory, card)
    return directory


def load_backbone(directory: str | Path) -> Tuple[Any, Card]:
    """(timm model in eval mode with the exported weights, its card); clear errors for a wrong folder."""
    import timm
    from safetensors.torch import load_file

    card = read_card(directory)
    weights = Path(directory) / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{directory}: not an exported backbone (no {WEIGHTS} beside {CARD}); pass the `export/` "
                         "folder of a medscale checkpoint")
    model = timm.create_model(card.model, pretrained=False, **card.kwargs)
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), card


def save_for_timm_hub(directory: str | Path, out: str | Path) -> Path:
    """The export at `directory` (or a run directory's `export/`) as a Hugging Face hub folder that timm reads:
    `config.json` (the architecture, its arguments and a `pretrained_cfg` with the export's input size, mean and
    std), `model.safetensors`, and the medscale card beside them. `timm.create_model("local-dir:OUT",
    pretrained=True)` loads it; uploaded as a hub repository, so does `timm.create_model("hf-hub:USER/NAME",
    pretrained=True)`."""
    from timm.models import save_for_hf

    if (Path(directory) / "export" / CARD).is_file():  # a run directory: its newest export
        directory = Path(directory) / "export"
    model, card = load_backbone(directory)
    chans = card.in_chans
    out = Path(out)
    save_for_hf(model, str(out), model_args=dict(card.kwargs), safe_serialization=True, data_config={
        "input_size": (chans, card.image_size, card.image_size), "mean": tuple(card.mean)[:chans],
        "std": tuple(card.std)[:chans], "crop_pct": 1.0})
    config = json.loads((out / "config.json").read_text())
    pretrained = config.setdefault("pretrained_cfg", {})
    pretrained.pop("license", None)  # inherited from timm's own weights of the architecture, not these
    pretrained["tag"] = f"medscale-{card.method or 'export'}-step{card.step}"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_card(out, card)
    for name in ("config.json", "model.safetensors"):
        os.chmod(out / name, file_mode())
    return out
