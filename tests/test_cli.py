"""The `medscale` command line: clear errors with exit code 2, the preview (the demo has its own test)."""


from medscale.cli import main, split_overrides


def test_overrides_are_told_apart_from_inputs():
    inputs, overrides = split_overrides(["ct=/data/ct", "/x/y.nii", "shard.bit_depth=16", "s3://b/k=v"])
    assert inputs == ["ct=/data/ct", "/x/y.nii", "s3://b/k=v"]
    assert overrides == ["shard.bit_depth=16"]


def test_bad_override_exits_2_naming_the_key(tmp_path, capsys):
    code = main(["shard", str(tmp_path), "--output", str(tmp_path / "o"), "shard.bit_depth=12"])
    assert code == 2
    assert "shard.bit_depth" in capsys.readouterr().err


def test_preview_writes_a_grid_of_augmented_views(tmp_path, capsys):
    import shutil

    from PIL import Image

    from medscale.data.service import run_sharding
    from tests.conftest import MEDMNIST, shard_config

    shutil.copy(MEDMNIST / "breastmnist_28.npz", tmp_path / "b.npz")
    run_sharding(shard_config([tmp_path / "b.npz"], tmp_path / "out"))
    png = tmp_path / "preview.png"
    assert main(["preview", str(tmp_path / "out"), "--augment", "contrastive", "-n", "4", "-o", str(png),
                 "loader.image_size=32", "loader.small_crops=1", "loader.small_size=16"]) == 0
    # 3 views of 128 px per sample, one sample a row (about 4 tiles), each with 2 lines of text, 6-px gaps
    assert Image.open(png).size == (6 + 3 * 128 + 6, 4 * (128 + 30 + 6) + 6)


def test_version_and_each_eval_mode_has_its_own_help(capsys):
    import pytest

    from medscale import __version__

    def shown(*argv):
        with pytest.raises(SystemExit) as done:
            main(list(argv))
        assert done.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    assert shown("--version") == f"medscale {__version__}"
    watch = shown("eval", "watch", "--help")
    assert watch.startswith("usage: medscale eval watch RUN_DIR") and "--interval" in watch and "--once" in watch
    gate = shown("-v", "eval", "on-commit", "--help")
    assert "--tolerance" in gate and "--baseline" in gate and "$MEDSCALE_COMMIT" in gate and "--interval" not in gate
    top = shown("--help")
    assert "eval-watch" not in top and "{shard,demo,dedup,pretrain,launch,cluster,eval,preview,hf-export,config}" in top
    assert "medscale eval watch --help" in shown("eval", "--help")


def test_eval_modes_take_their_arguments_and_options(capsys):
    assert main(["eval", "watch"]) == 2
    assert "the run directory is missing: medscale eval watch RUN_DIR" in capsys.readouterr().err
    assert main(["eval", "watch", "a", "b"]) == 2
    assert "unexpected argument(s) b:" in capsys.readouterr().err
    assert main(["eval", "on-commit", "--tolerance", "-1", "--checkpoints", "raw"]) == 2  # the option is the key
    assert "eval.tolerance" in capsys.readouterr().err
