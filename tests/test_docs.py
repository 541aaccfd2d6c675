"""The configuration reference is generated from the config dataclasses and kept in the repository: it is current
(regenerated, it is the same file) and says what every key means."""

from pathlib import Path

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
