"""Config machinery: typed dataclass defaults, merged with one YAML file, then `section.key=value` overrides.

The sections themselves live beside the stages that own them (`medscale.data.config`, `medscale.dedup.config`);
the root that combines them is `medscale.config`. Here: loading, merging, error messages, value checks, saving.
A dataclass may define `validate(origin)` for checks that types cannot express; the root calls its sections'.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Tuple, Type, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medscale.core.errors import ConfigError
from medscale.core.registry import Registry, did_you_mean

T = TypeVar("T")
SECRET_KEYS = ("storage_options",)  # dicts of credentials: redacted whenever a config is printed or saved


def with_sections(base: type, registry: Registry, section: str) -> type:
    """The dataclass `base` with one field per entry of `registry` that has options: the entry's own section
    (`train.mae` for method `mae`), its options dataclass with its defaults. The same class for the same entries."""
    taken = {f.name for f in dataclasses.fields(base)}
    entries = []
    for name in registry:
        options = registry.options(name)
        if options is None:
            continue
        if name in taken or not name.isidentifier():
            raise ConfigError(f"{section}.{name}: a registered entry may not be named {name!r} (a key of {section} "
                              "or not a Python identifier); register it under another name")
        entries.append((name, options))
    return extended(base, tuple(entries))


@functools.lru_cache(maxsize=None)
def extended(base: type, sections: Tuple[Tuple[str, type], ...]) -> type:
    """The dataclass `base` with the fields `sections` ((name, dataclass), each defaulting to that dataclass's
    defaults) added, or replacing fields of the same name. Cached: the same class for the same arguments, which
    is how its instances are unpickled in another process (by the arguments that made their class)."""
    fields = [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in sections]
    recipe = (base, tuple((name, _recipe(cls)) for name, cls in sections))
    return dataclasses.make_dataclass(base.__name__, fields, bases=(base,), namespace={
        "__doc__": base.__doc__, "__module__": base.__module__, "_recipe": recipe,
        "__reduce__": lambda self: (_unpickle, (recipe, self.__dict__))})


def _recipe(cls: type) -> Any:
    """What pickles in place of an extended class (base and sections, down to importable classes)."""
    return cls.__dict__.get("_recipe", cls)


def _from_recipe(recipe: Any) -> type:
    if isinstance(recipe, type):
        return recipe
    base, sections = recipe
    return extended(base, tuple((name, _from_recipe(part)) for name, part in sections))


def _unpickle(recipe: Any, state: dict) -> Any:
    cls: Any = _from_recipe(recipe)
    obj = object.__new__(cls)
    obj.__dict__.update(state)
    return obj


def validate_sections(cfg: Any, names: Sequence[str], origin: str, section: str) -> None:
    """Each entry's own checks (`options.validate(origin, "train.mae")`) on the sections `cfg` holds."""
    for name in names:
        validate = getattr(getattr(cfg, name, None), "validate", None)
        if validate is not None:
            validate(origin, f"{section}.{name}")


def expected_type(root: type, full_key: str) -> Optional[str]:
    """The declared type of a dotted key, read off the dataclasses (`shard.sources.ct.nifti_axis` -> 'int')."""
    cls: Any = root
    parts = full_key.split(".")
    i = 0
    while i < len(parts) and dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        if parts[i] not in hints:
            return None
        cls = hints[parts[i]]
        if typing.get_origin(cls) is dict and i + 1 < len(parts):
            cls = typing.get_args(cls)[1]
            i += 1  # skip the free-form dict key (a source name)
        i += 1
    return cls.__name__ if isinstance(cls, type) else str(cls).replace("typing.", "")


def _keys(cls: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of the dataclass `cls` ("*" stands for a free-form dict key such as a source name)."""
    for name, hint in typing.get_type_hints(cls).items():
        key = f"{prefix}{name}"
        yield key
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            yield from _keys(typing.get_args(hint)[1], f"{key}.*.")
        elif dataclasses.is_dataclass(hint):
            yield from _keys(hint, f"{key}.")


def _matches(pattern: str, key: str) -> bool:
    parts, wanted = pattern.split("."), key.split(".")
    return len(parts) == len(wanted) and all(p in ("*", w) for p, w in zip(parts, wanted))


def key_hint(root: type, key: str) -> str:
    """" (did you mean 'train.max_steps'?)" for an unknown `key`: the key with its section when it was given
    without one, else the closest spelling among its neighbours; "" when nothing is close."""
    patterns = list(_keys(root))
    for depth in range(1, 3):  # `max_steps` -> train.max_steps; `sources.ct.x` -> shard.sources.ct.x
        for pattern in patterns:
            head = ".".join(pattern.split(".")[:depth])
            candidate = f"{head}.{key}"
            if _matches(pattern, candidate):
                return f" (did you mean '{candidate}'?)"
    parent, _, last = key.rpartition(".")
    siblings = {p.rpartition(".")[2]: p for p in patterns if _matches(p.rpartition(".")[0], parent)
                and p.count(".") == key.count(".")}
    close = difflib.get_close_matches(last, list(siblings), n=1, cutoff=0.6)
    return f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""


def _describe(root: type, error: OmegaConfBaseException, origin: str, given: str = "") -> str:
    """The one line for OmegaConf's `error`; `given`: the key an override set (the hint completes all of it)."""
    key = getattr(error, "full_key", None) or "?"
    msg = str(getattr(error, "msg", error)).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        whole = given if given.startswith(key + ".") else key
        return (f"{origin}: unknown key '{key}'{key_hint(root, whole)}. Check the spelling against `medscale config` "
                "or docs/config.md.")
    expected = expected_type(root, key)
    return f"{origin}: bad value for key '{key}'" + (f" (expected {expected})" if expected else "") + f": {msg}"


def load_config(root: Type[T], path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of the dataclass `root` <- YAML file at `path` (`-`: standard input) <- `section.key=value`
    overrides; validated, or a ConfigError naming the key and where it came from (the file, or the override)."""
    cfg = OmegaConf.structured(root)
    if path is not None:
        from_stdin = str(path) == "-"  # a config that must not touch the disk (credentials), piped by its caller
        file = Path(path)
        path = file if not from_stdin else "standard input"
        if not from_stdin and not file.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file (see configs/).")
        try:
            loaded = OmegaConf.create(_colons_as_text(sys.stdin.read() if from_stdin else file.read_text()))
        except Exception as exc:  # yaml errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (e.g. `shard:`).")
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as exc:
            raise ConfigError(_describe(root, exc, str(path))) from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. shard.shard_size=500).")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([_colons_as_text(item)]))
        except OmegaConfBaseException as exc:
            raise ConfigError(_describe(root, exc, f"override '{item}'", item.split("=", 1)[0])) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': its value is not valid YAML ({str(exc).splitlines()[0]}); quote "
                              "it, and write mappings as {key: value} with a space after each colon") from exc
    result: T = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate = getattr(result, "validate", None)
    origin = str(path) if path else "config"
    if validate is not None:
        try:
            validate(origin)
        except ConfigError as exc:  # name the override that set the bad key, not the file
            set_by = _override_of(exc.key, overrides)
            if set_by is None:
                raise
            raise ConfigError(str(exc).replace(f"{origin}:", f"override '{set_by}':", 1), exc.key) from None
    return result


_SEXAGESIMAL = re.compile(r"(?m)(:[ \t]+)(\d+(?::\d+)+)([ \t]*(?:#.*)?)$")  # a mapping's value `1:2`


def _colons_as_text(text: str) -> str:
    """YAML 1.1 reads `1:2` as 62 (base 60); a medscale value like `launch.nodes: 1:2` means the text: quote it (in
    a YAML document, or in a `key=value` override)."""
    key, equals, value = text.partition("=")
    if equals and "\n" not in text:
        return f"{key}='{value}'" if re.fullmatch(r"\d+(?::\d+)+", value) else text
    return _SEXAGESIMAL.sub(lambda m: f"{m.group(1)}'{m.group(2)}'{m.group(3)}", text)


def _override_of(key: Optional[str], overrides: Sequence[str]) -> Optional[str]:
    """The last override that set `key` (or a key above or below it), if any."""
    for item in reversed(overrides):
        set_key = item.split("=", 1)[0]
        if key and (set_key == key or key.startswith(set_key + ".") or set_key.startswith(key + ".")):
            return item
    return None


def check(ok: bool, origin: str, key: str, expected: str, value: Any) -> None:
    """Raise a ConfigError naming `key`, where it came from and what was expected, unless `ok`."""
    if not ok:
        raise ConfigError(f"{origin}: bad value for key '{key}': {value!r}; expected {expected}.", key)


def check_choice(value: Any, choices: Sequence[Any], origin: str, key: str) -> None:
    """`value` must be one of `choices` (a registry's names); a misspelled name gets the closest one."""
    if value not in choices:
        hint = did_you_mean(value, tuple(str(c) for c in choices)) if isinstance(value, str) else ""
        check(False, origin, key, " | ".join(str(c) for c in choices) + hint, value)


def _redacted(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: ({n: "<redacted>" for n in v} if k in SECRET_KEYS and isinstance(v, dict) else _redacted(v))
                for k, v in data.items()}
    return data


def to_yaml(cfg: Any, redact: bool = True) -> str:
    """A config dataclass (or a mapping of section name -> dataclass) as YAML; storage options (credentials) are
    redacted unless asked."""
    data = ({k: dataclasses.asdict(v) for k, v in cfg.items()} if isinstance(cfg, dict) else dataclasses.asdict(cfg))
    return OmegaConf.to_yaml(OmegaConf.create(_redacted(data) if redact else data))


def _field_notes(cls: type) -> dict:
    """{field: its one-line comment} of a dataclass, read off its source (`name: type = default  # note`)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # a class made at run time (the assembled sections) has none of its own
        return {}
    notes = {}
    for line in lines:
        found = re.match(r"\s+(\w+): [^#]+?#\s*(.+)$", line)
        if found:
            notes[found.group(1)] = found.group(2).strip()
    return notes


def _default_text(value: Any) -> str:
    text = "null" if value is None else yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").replace("|", "\\|")


def reference_rows(cls: Any, prefix: str = "") -> Iterator[Tuple[str, str, str, str]]:
    """(key, type, default, note) of every leaf key of the dataclass `cls` (a free-form name such as a source's
    is written NAME); a section of its own is described by its class's docstring."""
    hints = typing.get_type_hints(cls)
    notes: dict = {}
    for klass in reversed(cls.__mro__):
        if isinstance(klass, type) and dataclasses.is_dataclass(klass):
            notes.update(_field_notes(klass))
    for item in dataclasses.fields(cls):
        key, hint = f"{prefix}{item.name}", hints[item.name]
        if dataclasses.is_dataclass(hint):
            doc = (hint.__doc__ or "").strip().splitlines()[0] if hint.__doc__ else ""
            yield key, "section", "", doc
            yield from reference_rows(hint, f"{key}.")
            continue
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            yield key, "mapping", "{}", notes.get(item.name, "")
            yield from reference_rows(typing.get_args(hint)[1], f"{key}.NAME.")
            continue
        default = item.default if item.default is not dataclasses.MISSING else (
            item.default_factory() if item.default_factory is not dataclasses.MISSING else None)
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        yield key, kind, _default_text(default), notes.get(item.name, "")


def reference(root: type) -> str:
    """The configuration reference as Markdown: one table per section, every key with its type, default and
    one line (generated from the dataclasses, so that it cannot drift from them)."""
    out = ["# Configuration reference", "",
           "Every key of a medscale config, generated from the config dataclasses by `medscale config --reference` "
           "(do not edit by hand). A YAML file sets them by section; `section.key=value` on the command line "
           "overrides the file.", ""]
    for section in dataclasses.fields(root):
        cls = typing.get_type_hints(root)[section.name]
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out += [f"## `{section.name}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, kind, default, note in reference_rows(cls, f"{section.name}."):
            note = note.replace("|", "\\|")
            if kind == "section":
                out.append(f"| **`{key}`** | | | {note} |")
            else:
                out.append(f"| `{key}` | {kind} | `{default}` | {note} |")
        out.append("")
    return "\n".join(out)
