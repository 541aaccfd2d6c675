"""Every registered strategy on one corpus with planted duplicates (a real volume whose slices are each doubled,
and a whole copy of it in another source): it marks duplicates, each points at a kept exemplar of the same corpus,
no sample is lost or counted twice, and a rerun decides the same. Written once, run for each registry entry."""

import shutil

import numpy as np
import pytest

from medscale.core.storage import filesystem
from medscale.data.manifest import read_manifest
from medscale.data.service import run_sharding
from medscale.dedup.config import DedupConfig
from medscale.dedup.service import run_dedup
from medscale.dedup.strategies import STRATEGIES
from tests.conftest import shard_config
from tests.dedup.planted import REAL, stack, write_nifti


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A sharded corpus: `doubled` (anatomical.nii, every slice twice in a row) and `copy` (the same file again)."""
    root = tmp_path_factory.mktemp("planted")
    slices = stack(REAL["anatomical"])
    for source in ("doubled", "copy"):
        (root / source).mkdir()
        write_nifti(np.repeat(slices, 2, axis=0), root / source / "anatomical.nii.gz")
    run_sharding(shard_config([f"doubled={root / 'doubled'}", f"copy={root / 'copy'}"], root / "corpus"))
    return root / "corpus"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A random-weight exported backbone, for a strategy that needs embeddings."""
    import timm
    import torch

    from medscale.core.card import save_backbone
    from tests.core.test_card import CARD

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export") / "export"
    save_backbone(timm.create_model(CARD.model, pretrained=False, **CARD.kwargs), folder, CARD)
    return folder


def _rows(corpus):
    fs, root = filesystem(str(corpus))
    return {r["key"]: r for r in read_manifest(fs, root).to_pylist()}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_reduces_planted_duplicates_exactly_once(strategy, planted, export, tmp_path):
    needs = getattr(STRATEGIES[strategy], "NEEDS", ())
    cfg = DedupConfig(strategy=strategy, executor="local", progress=False,
                      backbone=str(export) if "embeddings" in needs else None, eps=0.002)
    out = tmp_path / "corpus"
    shutil.copytree(planted, out)
    before = _rows(out)
    summary = run_dedup(str(out), cfg)
    rows = _rows(out)
    assert set(rows) == set(before) and summary.samples == len(rows)  # nothing lost, nothing added
    duplicates = [r for r in rows.values() if r["status"] == "duplicate"]
    assert duplicates and summary.duplicates == len(duplicates)
    for row in duplicates:
        exemplar = rows[row["duplicate_of"]]
        assert exemplar["status"] == "kept" and exemplar["key"] != row["key"]
    assert all(r["status"] in ("kept", "duplicate") for r in rows.values())
    copies: dict = {}  # each slice of the volume is planted 4 times: twice in a row, in both sources
    for row in rows.values():
        copies.setdefault(row["slice"] // 2, []).append(row["status"] == "kept")
    assert all(len(group) == 4 and sum(group) <= 2 for group in copies.values())  # at least halved
    run_dedup(str(out), cfg)  # a rerun decides the same
    assert _rows(out) == rows
