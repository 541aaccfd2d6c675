"""Run directories and exports in object storage (`s3://...`, any fsspec URL), read by the run directory's contract
(`core/runs.py`): the complete checkpoints (COMPLETE and meta.json present), the log's stop events, and an
export copied into a local folder before its backbone is loaded (the copy appears whole: temp name, then rename).

    urls = complete_checkpoints("s3://bucket/runs/mae", storage_options)   # oldest first
    local = fetch_export(urls[-1] + "/export", storage_options, Path("out/exports/mae@120"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from medscale.core import runs as ck
from medscale.core.card import CARD, WEIGHTS
from medscale.core.storage import filesystem, full_url, is_local, join

logger = logging.getLogger(__name__)
EXPORTS = "exports"  # in an evaluation's output folder: the local copies of the checkpoints it evaluates
FEATURES = "features"  # ... and its cache of extracted features
LOCAL_ONLY = (EXPORTS, FEATURES)  # caches: an output folder in object storage gets everything else


def is_remote(spec: str, storage_options: Optional[Mapping[str, Any]] = None) -> bool:
    """True when `spec` is a URL of a store other than the local disk."""
    return "://" in spec and not is_local(filesystem(spec, storage_options)[0])


def base_name(url: str) -> str:
    """The last part of a URL's path (`s3://b/runs/mae/` -> `mae`)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def complete_checkpoints(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The URLs of the run's checkpoint folders with their COMPLETE marker and meta.json, oldest first."""
    fs, root = filesystem(url, storage_options)
    fs.invalidate_cache()  # a listing must see what the trainer wrote since the last one
    markers = set(fs.glob(join(root, ck.CHECKPOINTS, "step-*", "*")))
    folders = sorted({m.rsplit("/", 1)[0] for m in markers})
    found = []
    for folder in folders:
        if join(folder, ck.COMPLETE) in markers and join(folder, ck.META) in markers:
            found.append(full_url(fs, folder))
        else:
            logger.warning("skipping %s: incomplete (no %s marker yet)", full_url(fs, folder), ck.COMPLETE)
    return found


def read_events(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
    """The run's `log.jsonl` events (none when it is not there yet)."""
    fs, root = filesystem(url, storage_options)
    try:
        text = fs.cat_file(join(root, ck.LOG)).decode(errors="replace")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def is_export(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> bool:
    """True when the folder at `url` holds an exported backbone (card and weights)."""
    fs, root = filesystem(url, storage_options)
    return fs.exists(join(root, CARD)) and fs.exists(join(root, WEIGHTS))


def cache_name(url: str, name: str) -> str:
    """The local folder name of the export at `url` shown as `name` (two runs may share a name, not a URL)."""
    return f"{name}.{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:8]}"


def fetch_export(url: str, storage_options: Optional[Mapping[str, Any]], target: Path) -> Path:
    """A local copy of the export at `url` in `target` (kept: a second call copies nothing); never a half-copied
    folder (downloaded under a temp name, then renamed)."""
    if (target / CARD).is_file() and (target / WEIGHTS).is_file():
        return target
    fs, root = filesystem(url, storage_options)
    partial = target.with_name(target.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in fs.ls(root, detail=False):
        if fs.isfile(name):
            fs.get_file(name, str(partial / name.rstrip("/").rsplit("/", 1)[-1]))
    if not (partial / CARD).is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise FileNotFoundError(f"{url}: no {CARD} (pruned while it was copied?)")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def staging_root(url: str) -> Path:
    """This machine's folder for an output folder in object storage: its caches, and each run's working copy."""
    return Path.home() / ".cache" / "medscale" / "eval" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class StagedOut:
    """An evaluation's output folder in object storage, worked on in a local copy of this run's own: `pull` brings
    what is there (the results parts, verdicts, watch log: a rerun skips what is done), `push` uploads what changed
    here, `close` removes the copy. The caches (features, exports) are shared by the runs on this machine. Parts
    have unique names, so evaluations on several machines into one folder keep every row; what the store does not
    hold was not committed, and is done again."""

    def __init__(self, url: str, storage_options: Mapping[str, Any], root: Optional[Path] = None) -> None:
        self.url, self.storage_options = url.rstrip("/"), storage_options
        root = root or staging_root(url)
        root.mkdir(parents=True, exist_ok=True)
        self.local = Path(tempfile.mkdtemp(prefix="run-", dir=root))
        for name in LOCAL_ONLY:
            (root / name).mkdir(exist_ok=True)
            (self.local / name).symlink_to(root / name, target_is_directory=True)
        self._synced: Dict[str, Tuple[int, float]] = {}  # relative path -> (size, mtime) when last synced

    def _state(self, path: Path) -> Tuple[int, float]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime

    def pull(self) -> None:
        """Download the folder's files (not the caches)."""
        fs, root = filesystem(self.url, self.storage_options)
        for path in fs.find(root):
            relative = path[len(root):].lstrip("/")
            if not relative or relative.split("/")[0] in LOCAL_ONLY:
                continue
            target = self.local / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
            self._synced[relative] = self._state(target)

    def push(self) -> None:
        """Upload the files written or changed here since the last pull or push (temp files and caches not)."""
        fs, root = filesystem(self.url, self.storage_options)
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            relative = path.relative_to(self.local).as_posix()
            if relative.split("/")[0] in LOCAL_ONLY or path.name.startswith("."):
                continue
            state = self._state(path)
            if self._synced.get(relative) != state:
                fs.put_file(str(path), join(root, relative))
                self._synced[relative] = state

    def close(self) -> None:
        """Remove this run's copy (the caches stay)."""
        shutil.rmtree(self.local, ignore_errors=True)


@contextlib.contextmanager
def working_out(out: Optional[str], storage_options: Mapping[str, Any]
                ) -> Iterator[Tuple[Optional[str], Optional[Callable[[], None]]]]:
    """(the folder an evaluation writes, a callback that publishes it or None): `out` itself when it is local;
    for object storage a `StagedOut`, pulled first, pushed and removed at the end whatever happens."""
    if not out or not is_remote(out, storage_options):
        yield out, None
        return
    staged = StagedOut(out, storage_options)
    try:
        staged.pull()
        yield str(staged.local), staged.push
    finally:
        try:
            staged.push()
        finally:
            staged.close()
