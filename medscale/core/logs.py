"""How a medscale command logs: one line per record (a traceback only with `-v`), and third parties' chatter (torch's
CUDA probe, deprecation notices, DeepSpeed's op-build prints) kept out of a normal run's output but written, with
everything the command logged, to its log file in `medscale.core.faults.log_dir()` (`-v` shows it all instead)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from medscale.core.faults import describe, log_path

# loggers whose records a normal run keeps off the terminal (below ERROR): the log file has them
QUIET_UNLESS_VERBOSE = ("py.warnings", "torch.utils.cpp_extension", "medscale.third_party")
KEEP_LOGS = 200  # log files kept in the log folder (commands' logs and tracebacks; the oldest go first)

# what third parties print (not log) is logged here, at INFO, by the code that captured it
THIRD_PARTY = logging.getLogger("medscale.third_party")


class _FileOnly(logging.Filter):
    """On a `QUIET_UNLESS_VERBOSE` logger: its records below ERROR go to the log file only, never to a terminal
    (ours, or a library's own handler: torch gives its loggers one)."""

    def __init__(self, file: Optional[logging.Handler]) -> None:
        super().__init__()
        self.file = file

    def filter(self, record: logging.LogRecord) -> bool:
        """Errors pass; anything else is handed to the log file (if any) and stops here."""
        if record.levelno >= logging.ERROR:
            return True
        if self.file is not None:
            self.file.handle(record)
        return False


class OneLineFormatter(logging.Formatter):
    """Log records with an exception show its one-line cause, never a traceback (libraries log some, e.g.
    asyncio's "Task exception was never retrieved" when an S3 endpoint goes away); `-v` shows them whole."""

    def formatException(self, ei) -> str:
        """The exception's one-line cause (the traceback with -v)."""
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return super().formatException(ei)
        return f"  ({describe(ei[1])})" if ei and ei[1] is not None else ""

    def formatStack(self, stack_info: str) -> str:
        """Nothing (the stack with -v)."""
        return "" if not logging.getLogger().isEnabledFor(logging.DEBUG) else super().formatStack(stack_info)


def setup_logging(verbose: bool, command: Optional[str] = None) -> Optional[Path]:
    """The root logger at INFO (DEBUG when `verbose`), one line per record on the terminal. Without `verbose`, third
    parties' records stay off the terminal and a log file (opened at its first record) gets every record of the
    command `command`, theirs included; returns its path (None with `verbose` or no command). Like
    `logging.basicConfig`, it leaves alone a root logger that a host program (or pytest) has configured."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "medscale", False)]
    if root.handlers and not ours:
        return None
    for handler in ours:  # a second call in the same process replaces the first one's set-up
        root.removeHandler(handler)
        handler.close()
    for name in QUIET_UNLESS_VERBOSE:
        quiet = logging.getLogger(name)
        for old in [f for f in quiet.filters if isinstance(f, _FileOnly)]:
            quiet.removeFilter(old)
    terminal = logging.StreamHandler()
    terminal.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers: list = [terminal]
    path, file = None, None
    if not verbose:
        logging.captureWarnings(True)
        if command:
            path = log_path(command)
            _prune(path.parent)
            file = logging.FileHandler(path, delay=True, encoding="utf-8")
            file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handlers.append(file)
        for name in QUIET_UNLESS_VERBOSE:
            logging.getLogger(name).addFilter(_FileOnly(file))
    for handler in handlers:
        handler.medscale = True
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return path


def _prune(folder: Path) -> None:
    """Remove all but the newest `KEEP_LOGS` medscale log files in `folder` (another process may remove them too)."""
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    for old in sorted(folder.glob("medscale-*.log"), key=mtime, reverse=True)[KEEP_LOGS:]:
        old.unlink(missing_ok=True)
