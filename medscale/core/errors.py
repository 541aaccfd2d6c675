"""One exception family per failure kind; every message names the file or key and the fix."""


class MedscaleError(Exception):
    """Base class of every error medscale raises on purpose. In a distributed job every rank raises it, and `rank`
    names the one that holds the cause: that rank prints it, the others exit quietly with the same code."""

    rank: int | None = None

    def held_by(self, rank: int) -> "MedscaleError":
        """This error, marked as caused on `rank`."""
        self.rank = rank
        return self


class ConfigError(MedscaleError):
    """A config file or override is wrong (unknown key, bad type, missing value); `key` names it when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InputError(MedscaleError):
    """An input file cannot be read as the kind it claims to be; the run quarantines it."""


class StorageError(MedscaleError):
    """An output or input URL cannot be used (missing bucket, not writable, bad layout)."""


class ShardFormatError(MedscaleError):
    """A shard or manifest does not follow the file contract (bad member name, missing index)."""


class FormatError(MedscaleError):
    """A file another stage wrote has a format version this medscale does not read (`core/formats.py`)."""


class FaultError(MedscaleError):
    """A failed attempt stopped the run (full disk, permissions, network after retries, a dead worker); nothing
    committed is lost and rerunning the same command resumes."""
