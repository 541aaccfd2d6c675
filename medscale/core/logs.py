"""How a medscale command logs: one line per record (a traceback only with `-v`), and third parties' chatter (torch's
CUDA probe, deprecation notices) kept out of a normal run's output (`-v` shows it)."""

from __future__ import annotations

import logging

from medscale.core.faults import describe

QUIET_UNLESS_VERBOSE = ("py.warnings", "torch.utils.cpp_extension")


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


def setup_logging(verbose: bool) -> None:
    """The root logger at INFO (DEBUG when `verbose`), one line per record; third parties quiet unless `verbose`."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:
        logging.captureWarnings(True)
        for name in QUIET_UNLESS_VERBOSE:
            logging.getLogger(name).setLevel(logging.ERROR)
