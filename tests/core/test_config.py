"""Config: YAML + overrides merged onto typed defaults; bad keys and values are errors that name them."""

import pytest

from medscale.config import load as load_config
from medscale.core.config import to_yaml
from medscale.core.errors import ConfigError


def test_defaults_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("shard:\n  shard_size: 500\n  sources:\n    ct:\n"
                    "      window_center: 40\n      window_width: 400\n")
    cfg = load_config(path, ["shard.bit_depth=16", "shard.output=s3://bucket/x"])
    assert cfg.shard.shard_size == 500
    assert cfg.shard.bit_depth == 16
    assert cfg.shard.output == "s3://bucket/x"
    assert cfg.shard.sources["ct"].window_width == 400.0
    assert cfg.shard.prefix == "shard"  # untouched default


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("shard:\n  shard_sise: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "shard.shard_sise" in str(info.value) and str(path) in str(info.value)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("shard:\n  shard_size: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "shard.shard_size" in msg and "int" in msg and str(path) in msg


@pytest.mark.parametrize("override, key", [
    ("shard.bit_depth=12", "shard.bit_depth"),
    ("shard.executor=spark", "shard.executor"),
    ("shard.defaults.window_width=400", "shard.defaults.window_width"),  # width without center
    ("shard.nope=1", "shard.nope"),
    ("shard.task_memory_mb=0", "shard.task_memory_mb"),
    ("eval.task_memory_mb=-5", "eval.task_memory_mb"),
    ("eval.num_gpus=-1", "eval.num_gpus"),
])
def test_bad_overrides_are_named(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["shard.bit_depth"])


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_resolved_yaml_redacts_storage_credentials():
    cfg = load_config(None, ["shard.storage_options.secret=hunter2"])
    text = to_yaml(cfg)
    assert "hunter2" not in text and "<redacted>" in text


def test_every_bundled_preset_loads():
    from pathlib import Path

    presets = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert len(presets) >= 4
    for preset in presets:
        load_config(preset)
    assert load_config(presets[0].parent / "dedup-2d.yaml").dedup.verify == "dhash+ahash<=16"


def test_presets_load_by_name_from_anywhere_and_an_unknown_name_lists_them(tmp_path, monkeypatch):
    from medscale.config import load, preset_names
    from medscale.eval.datasets import load_dataset, parse_dataset

    monkeypatch.chdir(tmp_path)  # outside the checkout: the presets ship in the package
    assert {"mae-tiny", "demo", "eval-gate"} <= set(preset_names())
    assert load("mae-tiny") == load("mae-tiny.yaml") == load("configs/mae-tiny.yaml")
    assert load("mae-tiny").train.patch_size == 4
    with pytest.raises(ConfigError, match="config file mea-tiny does not exist; .* bundled preset by name: .*mae-tiny"):
        load("mea-tiny")
    gate = load("eval-gate").eval  # its datasets are the ones shipped with medscale, found from anywhere
    assert [parse_dataset(spec)[0] for spec in gate.datasets] == ["breast", "pneumonia"]
    assert len(load_dataset(gate.datasets[0]).labels["test"]) == 156  # BreastMNIST's test split


def test_choices_come_from_the_registries_and_name_them():
    from medscale.dedup.strategies import STRATEGIES

    with pytest.raises(ConfigError) as info:
        load_config(None, ["dedup.strategy=fuzzy"])
    assert all(name in str(info.value) for name in STRATEGIES)
    with pytest.raises(ConfigError, match="shard.reduce.*hash-volume"):
        load_config(None, ["shard.reduce=every-other"])
    with pytest.raises(ConfigError, match="shard.reduce_hash.*ahash | dhash | phash"):
        load_config(None, ["shard.reduce_hash=md5"])


def test_expected_types_are_read_off_the_sections():
    from medscale.config import MedscaleConfig
    from medscale.core.config import expected_type

    assert expected_type(MedscaleConfig, "shard.shard_size") == "int"
    assert expected_type(MedscaleConfig, "shard.max_size") == "Optional[int]"
    assert expected_type(MedscaleConfig, "shard.sources.ct.window_width") == "Optional[float]"
    assert expected_type(MedscaleConfig, "dedup.nope") is None


def test_reduction_while_sharding_needs_the_reducer_handed_in(tmp_path):
    from medscale.data.config import ShardConfig
    from medscale.data.service import run_sharding

    cfg = ShardConfig(inputs=[str(tmp_path)], output=str(tmp_path / "out"), reduce="hash-volume")
    with pytest.raises(ConfigError, match="needs its reducer"):
        run_sharding(cfg)


def test_deepspeed_keys_the_engine_owns_are_refused():
    with pytest.raises(ConfigError, match="bad value for key .train.deepspeed.gradient_accumulation_steps"):
        load_config(None, ["train.deepspeed.gradient_accumulation_steps=4"])
    assert load_config(None, ["train.deepspeed.zero_optimization.overlap_comm=true"]).train.deepspeed
