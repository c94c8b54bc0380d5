"""How options are declared and read, for every options dataclass (``Config``: a run; ``Study``: a compare study).

Each option is a dataclass field: its annotation is its type, ``opt(...)`` gives its default, its help, its group and
whether the service may show it. YAML files, API keywords and command-line flags all go through ``build``, which
refuses unknown names and gives each value its option's type (or names the option it does not fit). Typed
dataclasses read with their type hints, rather than pydantic: the options need no parsing beyond these few types,
the saved ``config.yaml`` stays a plain mapping, and the package keeps one dependency less.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cxrlab.errors import ConfigError

# What an option changes: "training" (the default) what a run learns; "point" how a finished run answers (its
# operating point: changing it reuses the run); "scoring" only how a finished run is scored or recorded; "study"
# what compare runs beyond the training options (models, seeds, ensemble, ...).
GROUPS = ("training", "point", "scoring", "study")


def opt(default: Any, help: str, group: str = "training", public: bool = False, **extra: Any) -> Any:
    """One option: its default, its help, its group, and whether the service may show it (``public``: not a path, not
    a secret). ``choices``, ``nargs`` and ``metavar`` go to the command line."""
    assert group in GROUPS, group
    metadata = {"help": help, "group": group, "public": public, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionType:
    """An option's type read from its annotation: ``float | None`` is (float, optional), ``list[int]`` is (int, a
    list), ``dict[str, str]`` a mapping; any other union (``str | list[float]``) is passed on as given, for the
    class's ``validate`` to read."""

    item: type | None
    is_list: bool = False
    optional: bool = False
    is_dict: bool = False


def option_type(hint: Any) -> OptionType:
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) > 1:
            return OptionType(None, optional=True)
        hint = rest[0]
    origin = typing.get_origin(hint)
    if origin is list:
        return OptionType(typing.get_args(hint)[0], True, optional)
    if origin is dict:
        return OptionType(None, optional=optional, is_dict=True)
    if origin is not None:
        return OptionType(None, optional=optional)
    return OptionType(hint, optional=optional)


def option_types(cls: type) -> dict[str, OptionType]:
    return {name: option_type(hint) for name, hint in typing.get_type_hints(cls).items() if not name.startswith("_")}


def build(cls: type, values: dict, source: str, help_command: str) -> Any:
    """``cls`` from ``values`` (YAML, keywords or flags), each given its option's type; not yet validated."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; see '{help_command}'")
    types = option_types(cls)
    return cls(**{k: coerce(k, types[k], v, source) for k, v in values.items()})


def coerce(name: str, kind: OptionType, value: Any, source: str) -> Any:
    """Give a YAML or command-line value its option's type, or name the option it does not fit."""
    if value is None:
        if kind.optional:
            return None
        raise ConfigError(f"{source}: option {name} cannot be null")
    try:
        if kind.is_dict:
            return _mapping(value)
        if kind.item is None:
            return value
        if kind.is_list:
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_scalar(kind.item, v) for v in value]
        return _scalar(kind.item, value)
    except (TypeError, ValueError):
        what = "mapping (or KEY=VALUE items)" if kind.is_dict else f"list of {kind.item.__name__}" if kind.is_list else kind.item.__name__
        raise ConfigError(f"{source}: option {name} = {value!r} is not a valid {what}") from None


def _mapping(value: Any) -> dict:
    """A mapping as YAML gives it, or the command line's KEY=VALUE items."""
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, (list, tuple)):
        raise ValueError
    pairs = [str(item).partition("=") for item in value]
    if any(not key or not sep or not item for key, sep, item in pairs):
        raise ValueError
    return {key: item for key, _, item in pairs}


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool and not isinstance(value, bool):
        raise ValueError
    if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise ValueError
    return kind(value)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in values.items()}
