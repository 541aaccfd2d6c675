"""What a stage's run did, printed for people (`format`) or as JSON (`as_dict`): one base for every summary."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict


class Summary:
    """Base of the stages' summary dataclasses; `as_dict` also holds the read-only properties listed in `DERIVED`."""

    DERIVED: tuple = ()

    def format(self) -> str:
        """A few human lines for the end of a run."""
        raise NotImplementedError

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready."""
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass
        return {**fields, **{name: getattr(self, name) for name in self.DERIVED}}
