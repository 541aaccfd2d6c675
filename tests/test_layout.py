"""The house rules of the package layout, read off every module's imports (function-level imports included)."""

import ast
from pathlib import Path
from typing import Iterator, Tuple

import medscale

PACKAGE = Path(medscale.__file__).parent
# the flow of DESIGN.md: a module imports only from its own rank or below; the root modules (cli, config) sit on top
RANKS = {"core": 0, "hashing": 1, "data": 2, "dedup": 3, "trainer": 4, "eval": 5, "launcher": 6, "cluster": 6}
TOP = 9
# what later stages may use of `data`: its public modules (the commit protocol, the manifest and shard formats,
# reading images as sharding does, config, loaders), never the sharding internals (ingest, plan, service, the
# format readers); the command line (a root module) drives the sharding service itself
DATA_API = {"medscale.data", "medscale.data.commit", "medscale.data.manifest", "medscale.data.shards",
            "medscale.data.png", "medscale.data.sources", "medscale.data.config", "medscale.data.loaders",
            "medscale.data.dataset", "medscale.data.augment"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[Tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every medscale import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("medscale"):
                    yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("medscale"):
                for alias in node.names:
                    yield base, alias.name, node.lineno


def stage_rank(module: str) -> int:
    parts = module.split(".")
    return RANKS.get(parts[1], TOP) if len(parts) > 1 else TOP


def all_imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for target, name, line in imports(path):
            yield me, target, name, f"{path.relative_to(PACKAGE.parent)}:{line}"


def test_imports_point_down_the_flow():
    wrong = [f"{where}: {me} imports {target}" for me, target, _, where in all_imports()
             if stage_rank(target) > stage_rank(me)]
    assert not wrong, "\n".join(wrong)


def test_data_never_imports_dedup_and_core_imports_no_stage():
    data = [where for me, target, _, where in all_imports() if me.startswith("medscale.data")
            and target.startswith("medscale.dedup")]
    core = [where for me, target, _, where in all_imports() if me.startswith("medscale.core")
            and not target.startswith("medscale.core")]
    assert not data and not core, data + core


def owner_of_private(target: str, name: str) -> str:
    """The module or package that owns the first private name in `from target import name` ('' when none):
    `from a.b import _x` -> 'a.b'; `import a._m.y` -> 'a'."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_"):
            return ".".join(parts[:i])
    return target if name.startswith("_") else ""


def test_no_module_imports_another_modules_private_names():
    wrong = []
    for me, target, name, where in all_imports():
        owner = owner_of_private(target, name)
        if owner and me != owner and not me.startswith(owner + "."):
            wrong.append(f"{where}: {me} imports {name or target}, private to {owner}")
    assert not wrong, "\n".join(wrong)


def test_other_stages_use_only_the_public_modules_of_data():
    wrong = [f"{where}: {me} imports {target}" for me, target, _, where in all_imports()
             if target.startswith("medscale.data") and not me.startswith("medscale.data")
             and stage_rank(me) < TOP and target not in DATA_API]
    assert not wrong, "\n".join(wrong)


def test_the_rules_see_the_imports():
    """The walk finds what it must, so the rules above cannot pass by reading nothing."""
    found = {(me, target) for me, target, _, _ in all_imports()}
    assert ("medscale.data.ingest", "medscale.hashing.hashes") in found
    assert ("medscale.dedup.compact", "medscale.data.commit") in found
    assert ("medscale.hashing.native", "medscale.hashing") in found  # `from medscale.hashing import _lanczos`
    assert stage_rank("medscale.dedup.service") > stage_rank("medscale.data.commit")
    assert owner_of_private("medscale.data.detect", "_gunzip_head") == "medscale.data.detect"
    assert owner_of_private("medscale.hashing", "_lanczos") == "medscale.hashing"
