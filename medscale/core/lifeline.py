"""Processes that do not outlive the command that started them, even when it is SIGKILLed.

A command that starts helpers (a forkserver and its pool workers, the resource tracker, a local Ray cluster) calls
`reap_when_gone()` once: a small watcher process notes the command's descendants every half second and, the moment
the command is gone, kills the ones it noted (checked by start time, so a reused pid is never hit). Helpers that a
normal exit stops are already gone by then; the watcher only acts on leftovers. Linux (/proc); elsewhere a no-op.

    python -m medscale.core.lifeline PID      # the watcher itself
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

POLL_S = 0.5


def _stat(pid: int) -> Optional[tuple]:
    """(parent pid, start time) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (None if fields[0] == "Z" else (int(fields[1]), int(fields[19])))


def descendants(pid: int) -> Dict[int, int]:
    """{pid: start time} of every live descendant of `pid`."""
    children: Dict[int, list] = {}
    starts: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
                starts[int(entry)] = stat[1]
    found, todo = {}, list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        if child not in found and child in starts:
            found[child] = starts[child]
            todo.extend(children.get(child, ()))
    return found


def parent(pid: int) -> Optional[int]:
    """The parent pid of a live process, or None."""
    stat = _stat(pid)
    return stat[0] if stat else None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child between fork and exec (`preexec_fn`): the kernel sends it `sig` when its parent dies (Linux
    PR_SET_PDEATHSIG); nothing elsewhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG


def reap_when_gone() -> None:
    """Start the watcher for this process (once per process; nothing where /proc is missing)."""
    if not Path("/proc/self/stat").exists() or os.environ.get("MEDSCALE_LIFELINE") == str(os.getpid()):
        return
    os.environ["MEDSCALE_LIFELINE"] = str(os.getpid())  # children started later know it is watched
    subprocess.Popen([sys.executable, "-m", "medscale.core.lifeline", str(os.getpid())], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def watch(pid: int, poll_s: float = POLL_S) -> int:
    """Note `pid`'s descendants until it is gone, then kill the ones still alive; returns how many were killed."""
    started = (_stat(pid) or (0, None))[1]
    known: Dict[int, int] = {}
    while started is not None and (_stat(pid) or (0, None))[1] == started:
        known.update(descendants(pid))
        known.pop(os.getpid(), None)  # the watcher is one of them
        known = {p: t for p, t in known.items() if (_stat(p) or (0, None))[1] == t}
        time.sleep(poll_s)
    killed = 0
    for child, child_start in known.items():
        if (_stat(child) or (0, None))[1] == child_start:
            try:
                os.kill(child, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


if __name__ == "__main__":
    watch(int(sys.argv[1]))
