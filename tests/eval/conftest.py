"""Evaluation fixtures: the real BreastMNIST and PneumoniaMNIST files, and a tiny exported backbone (the card
contract, random weights) small enough to fine-tune on CPU in seconds."""

import pytest

from tests.conftest import MEDMNIST

BREAST = f"breast={MEDMNIST / 'breastmnist_28.npz'}"
PNEUMONIA = f"pneumonia={MEDMNIST / 'pneumoniamnist_28.npz'}"


def make_export(folder, seed=0, step=7):
    """A ViT (1 block, 64 wide, 4-px patches, 28 px) exported in the card contract."""
    import timm
    import torch

    from medscale.core.card import Card, save_backbone

    torch.manual_seed(seed)
    kwargs = {"img_size": 28, "patch_size": 4, "embed_dim": 64, "depth": 1, "num_heads": 2, "num_classes": 0}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    save_backbone(model, folder, Card("vit_tiny_patch16_224", 28, [0.5] * 3, [0.25] * 3, kwargs=kwargs, step=step))
    return folder


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("export") / "tiny")
