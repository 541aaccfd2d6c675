"""The docs hold no stale figures of code: the configuration reference is generated from the config dataclasses
(regenerated, it is the same file; every key says what it means), and the Python example runs as written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medscale.config import root_config
from medscale.core.config import reference, reference_rows

REPO = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_current_and_every_key_has_a_meaning():
    generated = reference(root_config())
    assert (REPO / "docs" / "config.md").read_text() == generated, (
        "docs/config.md is stale: regenerate it with `medscale config --reference > docs/config.md`")
    rows = list(reference_rows(root_config()))
    assert len(rows) > 250 and all(note for key, kind, default, note in rows), [r[0] for r in rows if not r[3]]
    assert ("train.mae.mask_ratio", "float", "0.75", "share of patches removed") in rows  # a method's own section
    assert any(key == "eval.dann.hidden" for key, *_ in rows)


@pytest.mark.slow
def test_the_python_api_page_runs_as_written(tmp_path):
    """The docs' Python example (shard, pre-train, evaluate, load in plain timm), run as a user would paste it."""
    page = (REPO / "docs" / "api.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| breastmnist | retrieval | ACC@1 |" in done.stdout and (tmp_path / "eval" / "results.parquet").exists()
