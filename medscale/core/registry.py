"""Named extension points (pre-training methods, evaluation tasks, dedup strategies): one `Registry` each, like
`timm.create_model`'s. Names are known without importing what they name ("module:attr" targets load on first use),
so the command line and config checks stay torch-free. Another package adds entries without editing medscale,
through its Python entry-point group (`medscale.methods`, `medscale.tasks`, `medscale.strategies`):

    [project.entry-points."medscale.methods"]
    mymethod = "mypackage.method:MyMethod"

or in code, with the registry's `register` (`register_method("mymethod", MyMethod)`, or as a decorator).

An entry owns its options: a dataclass (its class's `Options`, or one named at registration) that becomes the
config section of its name (`train.mymethod.*`); built-in entries name theirs as a torch-free "module:attr".
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
from importlib.metadata import entry_points
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

logger = logging.getLogger(__name__)


def did_you_mean(name: str, choices: Tuple[str, ...]) -> str:
    """" (did you mean 'mae'?)" for the closest of `choices` to a misspelled `name`, or ""."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Mapping[str, Any]):
    """name -> the object it names (a class, usually), loaded on first access. Iterating lists the names: built-in
    ones first, then those of installed packages' entry points in `group`."""

    def __init__(self, kind: str, group: str, builtins: Mapping[str, Any],
                 options: Optional[Mapping[str, Any]] = None) -> None:
        self.kind, self.group = kind, group
        self._targets: Dict[str, Any] = dict(builtins)  # an object, or "module:attr" to import
        self._options: Dict[str, Any] = dict(options or {})  # name -> its options dataclass, or "module:attr"
        self._discovered = False

    def _discover(self) -> None:
        """Add the entry points of `group` (once): a plugin may not take a name medscale already has."""
        if self._discovered:
            return
        self._discovered = True
        for point in entry_points(group=self.group):
            if point.name in self._targets:
                logger.warning("%s %r of package %s ignored: medscale already has a %s of that name", self.kind,
                               point.name, point.dist.name if point.dist else "?", self.kind)
                continue
            self._targets[point.name] = point

    def register(self, name: str, target: Any = None, options: Any = None) -> Any:
        """Add `target` as `name` (an object or "module:attr"), with its options dataclass (default: the target's
        `Options`); without `target`, a decorator that adds what it decorates. A name taken already is a
        ValueError."""
        def add(obj: Any) -> Any:
            self._discover()
            if name in self._targets:
                raise ValueError(f"a {self.kind} named {name!r} is registered already")
            self._targets[name] = obj
            if options is not None:
                self._options[name] = options
            return obj

        return add if target is None else add(target)

    def names(self) -> Tuple[str, ...]:
        """Every registered name, without importing anything they name."""
        self._discover()
        return tuple(self._targets)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __getitem__(self, name: str) -> Any:
        self._discover()
        target = self._targets[name]  # KeyError for an unknown name, as a mapping should
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        elif hasattr(target, "load") and hasattr(target, "group"):  # an entry point
            target = target.load()
        self._targets[name] = target
        return target

    def options(self, name: str) -> Optional[type]:
        """The options dataclass of entry `name` (None: it has none); a built-in's loads without its entry."""
        if name not in self._options:
            self._options[name] = getattr(self.load(name), "Options", None)
        found = self._options[name]
        if isinstance(found, str):
            module, _, attr = found.partition(":")
            found = getattr(importlib.import_module(module), attr)
        if found is not None and not (isinstance(found, type) and dataclasses.is_dataclass(found)):
            raise TypeError(f"{self.kind} {name!r}: its Options must be a dataclass, not {found!r}")
        self._options[name] = found
        return found

    def summaries(self) -> Dict[str, str]:
        """{name: the first line of its docstring}, importing nothing: an entry not loaded yet says where it is."""
        self._discover()
        out = {}
        for name, target in self._targets.items():
            if isinstance(target, str):
                out[name] = target
            elif hasattr(target, "load") and hasattr(target, "group"):
                out[name] = f"{target.value} (package {target.dist.name if target.dist else '?'})"
            else:
                out[name] = (target.__doc__ or "").strip().splitlines()[0] if target.__doc__ else name
        return out

    def load(self, name: str) -> Any:
        """The object registered as `name`; a ValueError naming the choices (and the closest one) otherwise."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return self[name]

    def unknown(self, name: str) -> str:
        """The message for an unknown `name`: the choices, and the closest one."""
        return f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; choose one of {', '.join(self)}"

