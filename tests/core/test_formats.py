"""Versioned contracts: a corpus and a run directory written before versions were recorded read as version 1
(kept as test data in `v1/`), and a file of a newer version is refused in one line naming it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medscale.config import load
from medscale.core import runs
from medscale.core.card import read_card
from medscale.core.errors import FormatError
from medscale.core.formats import check_format
from medscale.core.storage import filesystem
from medscale.data.index import load_index
from medscale.data.manifest import CORPUS_FILE, corpus_format, kept_digest
from medscale.trainer.resume import check_resume

V1 = Path(__file__).parent / "v1"
REPO = Path(__file__).resolve().parents[2]


def test_versions_absent_are_1_newer_ones_are_refused_and_damaged_ones_named():
    assert check_format(None, 1, "f", "x") == 1 and check_format(2, 3, "f", "x") == 2
    with pytest.raises(FormatError, match="f: x format 4 was written by a newer medscale .* upgrade medscale"):
        check_format(4, 3, "f", "x")
    for bad in (0, "2", 1.0, True):
        with pytest.raises(FormatError, match="is not a valid x format version"):
            check_format(bad, 3, "f", "x")


def test_a_version_1_corpus_still_reads_with_the_digest_its_run_recorded():
    fs, root = filesystem(str(V1 / "corpus"))
    assert corpus_format(fs, root) == 1 and not (V1 / "corpus" / CORPUS_FILE).exists()
    index = load_index(str(V1 / "corpus"))
    assert len(index) == 16 and index.missing == 0 and sorted(set(index.labels.tolist())) == [0, 1]
    meta = runs.read_meta(V1 / "run" / "checkpoints" / "step-00000002")
    assert kept_digest(fs, root, str(V1 / "corpus")) == (meta["manifest_digest"], meta["kept_samples"])


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_each_loader_takes_the_corpus_digest_from_its_own_index(kind):
    """The digest a resume checks is the loader's (what it reads), equal to the manifest's kept set's."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    from medscale.data.config import LoaderConfig
    from medscale.data.loaders import create_loader

    meta = runs.read_meta(V1 / "run" / "checkpoints" / "step-00000002")
    loader = create_loader(str(V1 / "corpus"), LoaderConfig(loader=kind, device="cpu", batch_size=4, num_workers=0))
    assert loader.corpus_digest == (meta["manifest_digest"], meta["kept_samples"])


def test_a_version_1_run_directory_lists_reads_and_would_resume():
    run = V1 / "run"
    [checkpoint] = runs.complete_checkpoints(run)
    meta = runs.read_meta(checkpoint)
    assert (runs.step_of(checkpoint), meta["world_size"], "format_version" in meta) == (2, 1, False)
    assert [e["event"] for e in runs.read_log(run)] == ["start", "scalars", "checkpoint", "done"]
    for export in (checkpoint / runs.EXPORT, run / runs.EXPORT):
        card = read_card(export)
        assert (card.model, card.image_size, card.step, card.format_version) == ("vit_tiny_patch16_224", 32, 2, 1)
    cfg = load(run / runs.CONFIG, [f"train.data={V1 / 'corpus'}"])
    fs, root = filesystem(str(V1 / "corpus"))
    check_resume(meta, cfg.train, cfg.loader.image_size, kept_digest(fs, root, cfg.train.data), checkpoint)


def test_a_newer_corpus_is_refused_in_one_line_before_anything_runs(tmp_path):
    corpus = shutil.copytree(V1 / "corpus", tmp_path / "corpus")
    (corpus / CORPUS_FILE).write_text(json.dumps({"format_version": 2}))
    with pytest.raises(FormatError, match="corpus.json: corpus format 2 was written by a newer medscale"):
        load_index(str(corpus))
    done = subprocess.run([sys.executable, "-m", "medscale", "pretrain", "-c", "configs/mae-tiny.yaml",
                           f"train.data={corpus}", f"train.run_dir={tmp_path / 'run'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"medscale: error: {corpus / CORPUS_FILE}: corpus format 2 was written by a newer medscale (this one reads "
        "up to 1); upgrade medscale (pip install -U medscale) to read it"), done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_newer_checkpoint_is_refused_naming_its_meta(tmp_path):
    run = shutil.copytree(V1 / "run", tmp_path / "run")
    [checkpoint] = runs.complete_checkpoints(run)
    meta = json.loads((checkpoint / runs.META).read_text())
    (checkpoint / runs.META).write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(FormatError, match=f"{checkpoint / runs.META}: run directory format 3 was written by a newer"):
        runs.read_meta(checkpoint)


def test_what_medscale_writes_now_carries_its_versions(tmp_path):
    from medscale.data.commit import open_output
    from medscale.data.manifest import CORPUS_FORMAT

    fs, root = filesystem(str(tmp_path / "out"))
    fs.makedirs(root, exist_ok=True)
    open_output(fs, root, "shard", None)
    assert json.loads((tmp_path / "out" / CORPUS_FILE).read_text()) == {"format_version": CORPUS_FORMAT}
    runs.write_meta(tmp_path, {"step": 1})
    assert runs.read_meta(tmp_path) == {"step": 1, "format_version": runs.RUN_FORMAT}
