"""The exported-backbone contract: saved by medscale, loaded back by plain timm + safetensors."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from medscale.core.card import load_backbone, save_backbone
from medscale.core.errors import InputError

CARD = {"model": "resnet10t", "kwargs": {"num_classes": 0}, "image_size": 32, "in_chans": 3,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_round_trip_in_plain_timm(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(CARD["model"], pretrained=False, **CARD["kwargs"]).eval()
    save_backbone(model, tmp_path, CARD)
    card = json.loads((tmp_path / "card.json").read_text())  # what a user without medscale does
    plain = timm.create_model(card["model"], pretrained=False, **card["kwargs"]).eval()
    plain.load_state_dict(load_file(str(tmp_path / "backbone.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), model(x))
    loaded, card2 = load_backbone(tmp_path)
    assert card2 == CARD
    torch.testing.assert_close(loaded(x), model(x))


def test_wrong_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not an exported backbone"):
        load_backbone(tmp_path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_export_files_are_readable_as_the_umask_says(tmp_path, umask, mode):
    import os

    model = timm.create_model(CARD["model"], pretrained=False, **CARD["kwargs"])
    before = os.umask(umask)
    try:
        save_backbone(model, tmp_path, CARD)
    finally:
        os.umask(before)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"backbone.safetensors": mode,
                                                                             "card.json": mode}
