"""Config machinery: typed dataclass defaults, merged with one YAML file, then `section.key=value` overrides.

The sections themselves live beside the stages that own them (`medscale.data.config`, `medscale.dedup.config`);
the root that combines them is `medscale.config`. Here: loading, merging, error messages, value checks, saving.
A dataclass may define `validate(origin)` for checks that types cannot express; the root calls its sections'.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medscale.core.errors import ConfigError

T = TypeVar("T")
SECRET_KEYS = ("storage_options",)  # dicts of credentials: redacted whenever a config is printed or saved


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


def _describe(root: type, error: OmegaConfBaseException, origin: str) -> str:
    key = getattr(error, "full_key", None) or "?"
    msg = str(getattr(error, "msg", error)).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return f"{origin}: unknown key '{key}'. Check the spelling against `medscale config` or the README."
    expected = expected_type(root, key)
    return f"{origin}: bad value for key '{key}'" + (f" (expected {expected})" if expected else "") + f": {msg}"


def load_config(root: Type[T], path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of the dataclass `root` <- YAML file at `path` (`-`: standard input) <- `section.key=value`
    overrides; validated, or a ConfigError naming the key and where it came from (the file, or the override)."""
    cfg = OmegaConf.structured(root)
    if path is not None:
        from_stdin = str(path) == "-"  # a config that must not touch the disk (credentials), piped by its caller
        path = Path(path) if not from_stdin else "standard input"
        if not from_stdin and not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file (see configs/).")
        try:
            loaded = OmegaConf.create(_colons_as_text(sys.stdin.read() if from_stdin else path.read_text()))
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
            raise ConfigError(_describe(root, exc, f"override '{item}'")) from exc
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
            item = _override_of(exc.key, overrides)
            if item is None:
                raise
            raise ConfigError(str(exc).replace(f"{origin}:", f"override '{item}':", 1), exc.key) from None
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
    """`value` must be one of `choices` (a registry's names)."""
    check(value in choices, origin, key, " | ".join(str(c) for c in choices), value)


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
