"""The exported-backbone contract: saved by medscale, loaded back by plain timm + safetensors; one typed reader."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from medscale.core.card import Card, load_backbone, read_card, save_backbone, write_card
from medscale.core.errors import FormatError, InputError

CARD = Card("resnet10t", 32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], kwargs={"num_classes": 0}, in_chans=3)


def test_round_trip_in_plain_timm(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(CARD.model, pretrained=False, **CARD.kwargs).eval()
    save_backbone(model, tmp_path, CARD)
    card = json.loads((tmp_path / "card.json").read_text())  # what a user without medscale does
    assert card["format_version"] == 1 and "step" not in card  # None fields are left out
    plain = timm.create_model(card["model"], pretrained=False, **card["kwargs"]).eval()
    plain.load_state_dict(load_file(str(tmp_path / "backbone.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), model(x))
    loaded, card2 = load_backbone(tmp_path)
    assert card2 == CARD
    torch.testing.assert_close(loaded(x), model(x))


def test_an_export_as_a_hub_folder_loads_in_timm_by_name_with_its_preprocessing(tmp_path):
    """`medscale hf-export RUN OUT`: timm's `local-dir:` loader (the hub format, offline) rebuilds the same model,
    with the export's input size, mean and std as its data config."""
    import subprocess
    import sys

    from tests.eval.conftest import make_export

    run = tmp_path / "run"
    make_export(run / "export")  # a run directory: its export/ is taken
    done = subprocess.run([sys.executable, "-m", "medscale", "hf-export", str(run), str(tmp_path / "hub")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "local-dir:" in done.stdout, done.stderr[-2000:]
    assert {p.name for p in (tmp_path / "hub").iterdir()} == {"config.json", "model.safetensors", "card.json"}
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["pretrained_cfg"]["tag"] == "medscale-export-step7" and "license" not in config["pretrained_cfg"]
    hub = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    model, card = load_backbone(run / "export")
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(hub(x), model(x))
    data = timm.data.resolve_data_config({}, model=hub)
    assert (data["input_size"], data["mean"], data["std"]) == ((3, 28, 28), [0.5] * 3, [0.25] * 3)


def test_wrong_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not an exported backbone"):
        load_backbone(tmp_path)
    write_card(tmp_path, CARD)
    with pytest.raises(InputError, match="no backbone.safetensors beside card.json"):
        load_backbone(tmp_path)


def test_a_card_without_a_version_is_version_1_and_unknown_keys_round_trip(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"model": "m", "image_size": 8, "mean": [0.5], "std": [0.5],
                                                    "in_chans": 1, "later_key": {"a": 1}}))
    card = read_card(tmp_path)
    assert (card.format_version, card.in_chans, card.kwargs, card.extra) == (1, 1, {}, {"later_key": {"a": 1}})
    write_card(tmp_path / ".", card)
    assert read_card(tmp_path) == card


@pytest.mark.parametrize("change, error, words", [
    ({"format_version": 2}, FormatError, "card format 2 was written by a newer medscale (this one reads up to 1)"),
    ({"format_version": "1"}, FormatError, "is not a valid export card format version"),
    ({"mean": None, "std": None, "model": None}, None, ""),
])
def test_a_newer_or_damaged_card_is_one_line_naming_the_file(tmp_path, change, error, words):
    data = {**CARD.to_json(), **change}
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(error or InputError) as info:
        read_card(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "card.json") in message and "\n" not in message
    assert words in message if words else "missing key(s) ['model', 'mean', 'std']" in message


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_export_files_are_readable_as_the_umask_says(tmp_path, umask, mode):
    import os

    model = timm.create_model(CARD.model, pretrained=False, **CARD.kwargs)
    before = os.umask(umask)
    try:
        save_backbone(model, tmp_path, CARD)
    finally:
        os.umask(before)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"backbone.safetensors": mode,
                                                                             "card.json": mode}
