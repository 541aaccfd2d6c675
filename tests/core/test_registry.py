"""The registries: names known without imports, `register_*`, did-you-mean; and a package made here, installed
with pip, that adds a method, a task and a strategy through entry points without editing medscale."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medscale.core.registry import Registry, did_you_mean

REPO = Path(__file__).resolve().parents[2]


def test_names_are_known_without_importing_what_they_name():
    registry = Registry("widget", "medscale.test-widgets", {"lazy": "no_such_module_here:Thing", "json": json})
    assert tuple(registry) == ("lazy", "json") and "lazy" in registry and len(registry) == 2
    assert registry.summaries()["lazy"] == "no_such_module_here:Thing"
    with pytest.raises(ModuleNotFoundError):
        registry["lazy"]  # imported only when used
    registry.register("dumps", "json:dumps")
    assert registry.load("dumps") is json.dumps

    @registry.register("decorated")
    class Decorated:
        """A widget."""

    assert registry.load("decorated") is Decorated and registry.summaries()["decorated"] == "A widget."
    with pytest.raises(ValueError, match="a widget named 'json' is registered already"):
        registry.register("json", object())
    with pytest.raises(ValueError, match=r"unknown widget 'dump' \(did you mean 'dumps'\?\); choose one of lazy, "):
        registry.load("dump")
    assert did_you_mean("zzzz", ("mae", "swav")) == ""


def test_the_factories_name_the_closest_choice():
    from medscale.dedup.strategies import create_strategy
    from medscale.eval.registry import create_task
    from medscale.trainer.registry import create_method

    cases = ((lambda: create_method("simclar", None, 32), "simclr"),
             (lambda: create_task("retreival", None), "retrieval"), (lambda: create_strategy("every_n"), "every-n"))
    for make, right in cases:
        with pytest.raises(ValueError, match=f"did you mean '{right}'"):
            make()


PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "medscale-plugin-demo"
        version = "0.1"

        [project.entry-points."medscale.methods"]
        plugmae = "plugdemo:PlugMethod"
        [project.entry-points."medscale.tasks"]
        plugknn = "plugdemo:PlugTask"
        [project.entry-points."medscale.strategies"]
        plugevery = "plugdemo:PlugStrategy"
        every-n = "plugdemo:PlugStrategy"
        """,
    "plugdemo/__init__.py": '''
        """A user's package: a method, an evaluation task and a dedup strategy of its own."""
        from dataclasses import dataclass

        from medscale.dedup.strategies import EveryN
        from medscale.eval.retrieval import KnnTask
        from medscale.trainer.methods import MaeMethod


        class PlugMethod(MaeMethod):
            """MAE, as a package's own method."""

            picture_tag = "plug-reconstruction"


        class PlugTask(KnnTask):
            """kNN, as a package's own task."""


        @dataclass
        class PlugOptions:
            """The strategy's own section, `dedup.plugevery`."""

            every: int = 3


        class PlugStrategy(EveryN):
            """Every third slice, as a package's own strategy."""

            Options = PlugOptions

            def __init__(self, every_n: int = 3) -> None:
                super().__init__(every_n)

            @classmethod
            def from_config(cls, cfg):
                return cls(cfg.plugevery.every)
        ''',
}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """An environment whose Python path holds the plugin package, installed by pip (entry points and all)."""
    root = tmp_path_factory.mktemp("plugin")
    source, site = root / "src", root / "site"
    for name, text in PLUGIN.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(textwrap.dedent(text))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", DS_ACCELERATOR="cpu")


def _python(env, code):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_package_adds_a_method_a_task_and_a_strategy_through_entry_points(plugin_env):
    done = _python(plugin_env, """
        import json, sys
        from medscale.trainer.registry import METHODS, create_method
        from medscale.eval.registry import TASKS
        from medscale.dedup.strategies import STRATEGIES, create_strategy
        from medscale.config import load
        names = {"methods": list(METHODS), "tasks": list(TASKS), "strategies": list(STRATEGIES)}
        names["torch_before_use"] = "torch" in sys.modules  # listing names imported nothing heavy
        cfg = load(None, ["train.method=plugmae", "eval.tasks=[plugknn]", "dedup.strategy=plugevery",
                          "train.plugmae.decoder_depth=1", "train.patch_size=8"])
        names["own_section"] = cfg.train.plugmae.decoder_depth  # the method's Options: its own train.plugmae
        method = create_method("plugmae", cfg.train, 32)
        import torch
        loss, logged = method(torch.randn(2, 3, 32, 32), torch.Generator().manual_seed(0))
        names["loss"] = float(loss)
        names["strategy"] = create_strategy("plugevery").n
        from medscale.dedup.strategies import strategy_from_config
        names["strategy_section"] = strategy_from_config(
            load(None, ["dedup.strategy=plugevery", "dedup.plugevery.every=5"]).dedup).n
        names["builtin_kept"] = STRATEGIES.load("every-n").__module__  # a plugin may not take a medscale name
        print(json.dumps(names))
    """)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["methods"][-1] == "plugmae" and result["tasks"][-1] == "plugknn"
    assert result["strategies"][-1] == "plugevery" and result["builtin_kept"] == "medscale.dedup.strategies"
    assert "strategy 'every-n' of package medscale-plugin-demo ignored: medscale already has" in done.stderr
    assert not result["torch_before_use"] and result["loss"] > 0 and result["strategy"] == 3
    assert result["own_section"] == 1 and result["strategy_section"] == 5  # sections of their own
    helped = subprocess.run([sys.executable, "-m", "medscale", "dedup", "--help"], capture_output=True, text=True,
                            env=plugin_env, cwd=REPO)
    assert "plugevery" in helped.stdout and "plugdemo:PlugStrategy (package medscale-plugin-demo)" in " ".join(
        helped.stdout.split())


@pytest.mark.slow
def test_medscale_pretrains_with_a_packages_method(plugin_env, tmp_path):
    from tests.trainer.conftest import MAE_TINY

    corpus = REPO / "tests" / "core" / "v1" / "corpus"
    done = subprocess.run([sys.executable, "-m", "medscale", "pretrain", "-c", str(MAE_TINY), f"train.data={corpus}",
                           f"train.run_dir={tmp_path / 'run'}", "train.method=plugmae", "train.max_steps=2",
                           "train.checkpoint_every=2", "train.progress=false", "loader.batch_size=8",
                           "loader.num_workers=0", "train.plugmae.decoder_depth=1", "train.optimizer=sgd"],
                          capture_output=True, text=True, env=dict(plugin_env, OMP_NUM_THREADS="1"), cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "run" / "export" / "card.json").read_text())
    assert card["method"] == "plugmae" and card["step"] == 2
    assert (tmp_path / "run" / "images" / "step-00000002.png").exists()
