"""The docs hold no stale figures of code: the configuration reference is generated from the config dataclasses
(regenerated, it is the same file; every key says what it means), every figure table is a benchmark's recorded
output, and the Python example runs as written."""

import os
import re
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


NOT_RUN_YET = {"gpu.md"}  # benchmarks/gpu.py needs an NVIDIA GPU; its page says it has not run


def test_every_included_result_was_written_by_its_benchmark():
    """Each `--8<--` include of docs/results names a file there (a missing one would render as nothing) whose first
    line says which benchmark wrote it; and every results file is on a page."""
    included = {name for page in sorted((REPO / "docs").glob("*.md"))
                for name in re.findall(r'--8<-- "docs/results/([\w.-]+)"', page.read_text())}
    results = REPO / "docs" / "results"
    assert included - NOT_RUN_YET and all((results / name).exists() for name in included - NOT_RUN_YET), sorted(
        name for name in included - NOT_RUN_YET if not (results / name).exists())
    for name in included - NOT_RUN_YET:
        assert (results / name).read_text().startswith("<!-- written by benchmarks/"), name
    assert {p.name for p in results.glob("*.md")} <= included, sorted({p.name for p in results.glob("*.md")} - included)


@pytest.mark.slow
def test_the_python_api_page_runs_as_written(tmp_path):
    """The docs' Python example (shard, pre-train, evaluate, load in plain timm), run as a user would paste it."""
    page = (REPO / "docs" / "api.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| breastmnist | retrieval | ACC@1 |" in done.stdout and (tmp_path / "eval" / "results.parquet").exists()
