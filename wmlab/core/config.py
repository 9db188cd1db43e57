"""Config helpers: frozen dataclasses in, frozen dataclasses out.

Every algorithm and model has a frozen dataclass config whose fields carry docstrings, so that the
command line (tyro) documents itself. These helpers rebuild configs from JSON (a run directory's
config.json) and name unknown or mistyped fields instead of ignoring them.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

Config = TypeVar("Config")


def from_dict(cls: type[Config], data: dict[str, Any]) -> Config:
    """Build the (nested) dataclass `cls` from a dict; unknown keys raise ValueError naming them."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; fields are {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        field_type = _dataclass_in(hints[name])
        values[name] = from_dict(field_type, value) if field_type is not None and isinstance(value, dict) else _restore_sequence(hints[name], value)
    return cls(**values)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for argument in typing.get_args(hint):
        if dataclasses.is_dataclass(argument):
            return argument
    return None


def _restore_sequence(hint: Any, value: Any) -> Any:
    """JSON has no tuples: give tuple-typed fields their tuples back so configs compare equal."""
    if isinstance(value, list) and (typing.get_origin(hint) is tuple or hint is tuple):
        return tuple(value)
    return value


def differences(first: Any, second: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two configs of the same class differ."""
    changed = []
    for field in dataclasses.fields(first):
        a, b = getattr(first, field.name), getattr(second, field.name)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            changed += differences(a, b, prefix=name + ".")
        elif a != b:
            changed.append(name)
    return changed


def option_value(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in a command line, before tyro parses it
    (the value that chooses which config class tyro is given)."""
    for index, argument in enumerate(argv):
        if argument == name and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return None
