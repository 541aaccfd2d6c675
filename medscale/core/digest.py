"""Short stable ids derived from content (sample keys, volume and work-unit ids)."""

from __future__ import annotations

import hashlib
from typing import Any


def digest(*parts: Any, n: int = 12) -> str:
    """A short stable hex id of `parts`."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:n]
