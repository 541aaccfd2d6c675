"""A normal run's terminal shows medscale's own lines; third parties' chatter goes to the command's log file with
everything else; `-v` shows it all and writes no file."""

import os
import subprocess
import sys

SCRIPT = """
import logging, sys, warnings
from medscale.core.logs import THIRD_PARTY, setup_logging
print(setup_logging(sys.argv[1] == "-v", "pretrain"))
warnings.warn("a deprecation notice")
THIRD_PARTY.info("deepspeed: op built")
torch = logging.getLogger("torch")  # as torch does: a handler of its own, not propagated to the root
own = logging.StreamHandler()
own.setFormatter(logging.Formatter("TORCH %(message)s"))
torch.addHandler(own)
torch.propagate = False
logging.getLogger("torch.utils.cpp_extension").warning("compiling; No CUDA runtime is found")
logging.getLogger("medscale.trainer.engine").info("step 1")
THIRD_PARTY.error("a third party's error")
"""


def _run(tmp_path, *args):
    env = dict(os.environ, MEDSCALE_LOG_DIR=str(tmp_path / "logs"))
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=60)


def test_chatter_goes_to_the_log_file_not_the_terminal(tmp_path):
    done = _run(tmp_path, "-q")
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    assert path.startswith(str(tmp_path / "logs" / "medscale-pretrain-")) and path.endswith(".log")
    assert "step 1" in done.stderr and "a third party's error" in done.stderr  # errors are never hidden
    for chatter in ("deprecation notice", "op built", "compiling"):
        assert chatter not in done.stderr
    logged = open(path).read()
    for line in ("deprecation notice", "op built", "compiling", "step 1", "a third party's error"):
        assert line in logged


def test_verbose_shows_everything_and_writes_no_file(tmp_path):
    done = _run(tmp_path, "-v")
    assert done.returncode == 0 and done.stdout.strip() == "None"
    for line in ("deprecation notice", "op built", "TORCH compiling", "step 1"):
        assert line in done.stderr
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())


def test_the_log_folder_keeps_the_newest_files(tmp_path):
    from medscale.core.logs import KEEP_LOGS

    folder = tmp_path / "logs"
    folder.mkdir()
    for i in range(KEEP_LOGS + 5):
        old = folder / f"medscale-shard-20260101-0000{i:02d}-{i}.log"
        old.write_text("old")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    assert _run(tmp_path, "-q").returncode == 0
    left = sorted(p.name for p in folder.iterdir())
    assert len(left) == KEEP_LOGS + 1 and any(n.startswith("medscale-pretrain-") for n in left)
    assert "medscale-shard-20260101-000000-0.log" not in left  # the oldest went first


def test_a_host_programs_logging_is_left_alone(tmp_path, monkeypatch):
    import logging

    from medscale.core.logs import setup_logging

    monkeypatch.setenv("MEDSCALE_LOG_DIR", str(tmp_path / "logs"))
    root = logging.getLogger()
    host = logging.NullHandler()
    root.addHandler(host)  # pytest's own handlers may be there too: configured either way
    try:
        before = list(root.handlers), root.level
        assert setup_logging(False, "pretrain") is None
        assert (list(root.handlers), root.level) == before
    finally:
        root.removeHandler(host)
