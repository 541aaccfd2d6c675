"""What a benchmark prints, also written to `docs/results/NAME.md`, which the docs site includes: figures in the
docs come from a run, never typed by hand. By default only a run with the default arguments writes (a partial run
or a benchmark's own child process does not); a benchmark whose parts each need an input says itself when a part
is complete (`record=True`)."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def recorded(name: str, record: Optional[bool] = None, script: Optional[str] = None) -> Iterator[None]:
    """Run the block; what it printed goes to `docs/results/NAME.md` too, once it finished without an error (by
    default when the script was given no arguments; `script`: the benchmark's name when it is not NAME)."""
    if not (record if record is not None else not sys.argv[1:]):
        yield
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        yield
    import torch

    stamp, script = time.strftime("%Y-%m-%d"), script or name
    header = (f"<!-- written by benchmarks/{script}.py; do not edit -->\n"
              f"*Measured {stamp} by `benchmarks/{script}.py` on {os.cpu_count()} CPU cores ({platform.machine()}), "
              f"Python {platform.python_version()}, torch {torch.__version__}.*\n\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(header + buffer.getvalue().replace("\r", ""))
