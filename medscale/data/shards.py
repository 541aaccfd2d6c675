"""WebDataset tar shards with DALI `.idx` index files: the writer, the name rules, and a validating reader."""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from medscale.core.errors import ShardFormatError
from medscale.core.storage import join, mkstemp_shared

IDX_VERSION = "v1.2"  # the format DALI's wds2idx writes and fn.readers.webdataset reads
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_EXT_RE = re.compile(r"^[a-z0-9]+$")


_SHARD_RE = re.compile(r"^[A-Za-z0-9_\-]+\.tar$")


def check_shard_name(name: str) -> str:
    """`name` when it is a plain shard file name in the corpus root (`x.tar`: no folders, no `..`); a manifest
    naming anything else is refused, so that a crafted corpus cannot point a reader outside its root."""
    if not isinstance(name, str) or not _SHARD_RE.match(name):
        raise ShardFormatError(f"the manifest names shard {name!r}, which is not a plain `NAME.tar` in the corpus "
                               "root; refusing to read it (a damaged or crafted manifest)")
    return name


def member_name(header: bytes) -> str:
    """The name field of a 512-byte ustar header (what the member is called)."""
    return header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")


def shard_name(prefix: str, index: int) -> str:
    """`{prefix}-{index:06d}.tar`, the shard file contract."""
    return f"{prefix}-{index:06d}.tar"


def idx_name(tar_name: str) -> str:
    """The DALI index file beside a shard: `x.tar` -> `x.idx`."""
    return tar_name[:-4] + ".idx"


def ustar_header(name: str, size: int) -> bytes:
    """A 512-byte ustar header for a regular file (mode 0444, mtime 0, owner medscale): what tarfile would write
    for these fields, built directly because this runs once per member on the hot path."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise ShardFormatError(f"tar member name {name!r} is longer than 100 bytes; use a shorter key")
    header = bytearray(512)
    header[0:len(encoded)] = encoded
    header[100:108] = b"0000444\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b"        "  # checksum is computed with this field as spaces
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[265:273] = b"medscale"
    header[297:305] = b"medscale"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def check_member_name(name: str) -> Tuple[str, str]:
    """(key, extension) of a tar member name; ShardFormatError for absolute paths, `..`, or odd characters."""
    if name.startswith("/") or ".." in name.split("/") or "/" in name or "\\" in name:
        raise ShardFormatError(f"unsafe tar member name {name!r}: shards hold flat `key.ext` names only")
    key, _, ext = name.partition(".")
    if not _KEY_RE.match(key) or not _EXT_RE.match(ext):
        raise ShardFormatError(f"bad tar member name {name!r}: expected `key.ext` with key of [A-Za-z0-9_-]")
    return key, ext


@dataclass
class ShardInfo:
    """One finished shard written by `ShardWriter`."""

    local_path: str  # the finished tar on local disk
    idx_bytes: bytes  # its DALI index
    keys: List[str]
    size: int


class ShardWriter:
    """Append samples (`{ext: bytes}` per key) to local tar files, cut at `max_count` samples or `max_bytes`.

    Each finished shard is handed to `on_shard(ShardInfo)`, which moves it to its destination. Member headers
    are plain ustar with fixed owner and mtime, so the same samples always give byte-identical shards.
    """

    def __init__(self, on_shard: Callable[[ShardInfo], None], max_count: int, max_bytes: int,
                 tmp_dir: Optional[str] = None) -> None:
        self.on_shard = on_shard
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.tmp_dir = tmp_dir
        self._fh = None
        self._path = ""
        self._offset = 0
        self._keys: List[str] = []
        self._idx_lines: List[str] = []

    def _open(self) -> None:
        fd, self._path = mkstemp_shared(self.tmp_dir, prefix="tmp", suffix=".tar")
        self._fh = os.fdopen(fd, "wb", buffering=1 << 20)
        self._offset = 0
        self._keys, self._idx_lines = [], []

    def write(self, key: str, members: Dict[str, bytes]) -> None:
        """Add one sample; its members stay together in one shard, in the order given."""
        if self._fh is not None and (len(self._keys) >= self.max_count or self._offset >= self.max_bytes):
            self._finish()
        if self._fh is None:
            self._open()
        parts = []
        for ext, data in members.items():
            name = f"{key}.{ext}"
            check_member_name(name)
            header = ustar_header(name, len(data))
            self._fh.write(header)
            data_offset = self._offset + len(header)
            self._fh.write(data)
            pad = (-len(data)) % tarfile.BLOCKSIZE
            if pad:
                self._fh.write(b"\0" * pad)
            self._offset = data_offset + len(data) + pad
            parts.append(f"{ext} {data_offset} {len(data)} {name}")
        self._keys.append(key)
        self._idx_lines.append(" ".join(parts))

    def _finish(self) -> None:
        self._fh.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
        size = self._offset + 2 * tarfile.BLOCKSIZE
        self._fh.close()
        self._fh = None
        idx = f"{IDX_VERSION} {len(self._keys)}\n" + "\n".join(self._idx_lines) + "\n"
        self.on_shard(ShardInfo(self._path, idx.encode(), self._keys, size))

    def close(self) -> None:
        """Finish the open shard, if any."""
        if self._fh is not None:
            self._finish()

    def abort(self) -> None:
        """Drop the open shard (an error happened): nothing half-written leaves this writer."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            os.unlink(self._path)


def iter_shard(fileobj: io.BufferedIOBase, name: str = "shard") -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of a shard, validating every member name."""
    current, members = None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    raise ShardFormatError(f"{name}: member {info.name!r} is not a regular file")
                key, ext = check_member_name(info.name)
                if key != current and current is not None:
                    yield current, members
                    members = {}
                current = key
                members[ext] = tar.extractfile(info).read()
    except tarfile.TarError as exc:
        raise ShardFormatError(f"{name}: corrupt tar ({exc})") from exc
    if current is not None:
        yield current, members


def parse_idx(text: str, name: str = "index") -> Dict[str, Dict[str, Tuple[int, int]]]:
    """A DALI v1.2 index -> `{key: {ext: (offset, size)}}`."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v1.2"):
        raise ShardFormatError(f"{name}: not a DALI v1.2 index (first line {lines[0] if lines else ''!r})")
    samples: Dict[str, Dict[str, Tuple[int, int]]] = {}
    for line in lines[1:]:
        fields = line.split()
        members: Dict[str, Tuple[int, int]] = {}
        key = None
        for i in range(0, len(fields) - 3, 4):
            ext, offset, size, member = fields[i:i + 4]
            member_key, member_ext = check_member_name(member)
            if member_ext != ext or (key is not None and member_key != key):
                raise ShardFormatError(f"{name}: index line names {member!r} as a {ext!r} member of "
                                       f"{key or member_key!r}")
            key = member_key
            members[ext] = (int(offset), int(size))
        if key is not None:
            samples[key] = members
    return samples


def read_members(fs, root: str, shard: str, keys: List[str], ext: str = "png") -> Dict[str, bytes]:
    """One member (`ext`) of each of `keys` from a committed shard, by the offsets of its `.idx` (no full read)."""
    with fs.open(join(root, idx_name(shard)), "rb") as fh:
        index = parse_idx(fh.read().decode(), idx_name(shard))
    out = {}
    with fs.open(join(root, check_shard_name(shard)), "rb") as fh:
        for key in keys:
            if key not in index or ext not in index[key]:
                raise ShardFormatError(f"{shard}: no member {key}.{ext}")
            offset, size = index[key][ext]
            fh.seek(offset)
            out[key] = fh.read(size)
    return out
