"""Format versions of the files medscale writes for another stage to read (the export card, the corpus, the run
directory's checkpoints): `format_version`, an int. A file without one is version 1 (written before versions
were recorded); reading a version newer than this medscale knows is a one-line error that says to upgrade."""

from __future__ import annotations

from typing import Any

from medscale.core.errors import FormatError

FORMAT_KEY = "format_version"


def check_format(found: Any, supported: int, where: str, what: str) -> int:
    """The version `found` in the `what` file at `where` (1 when absent), if this medscale reads it."""
    version = 1 if found is None else found
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatError(f"{where}: {FORMAT_KEY} {found!r} is not a valid {what} format version (an int >= 1); "
                               "the file is damaged: write it again with medscale")
    if version > supported:
        raise FormatError(f"{where}: {what} format {version} was written by a newer medscale (this one reads up "
                               f"to {supported}); upgrade medscale (pip install -U medscale) to read it")
    return version
