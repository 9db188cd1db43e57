"""Config helpers: frozen dataclasses in, frozen dataclasses out.

Every algorithm and model has a frozen dataclass config whose fields carry docstrings, so that the
command line (tyro) documents itself. These helpers rebuild configs from JSON (a run directory's
config.json) and name unknown or mistyped fields instead of ignoring them.

Ranges. A config class that derives from `Config` declares the allowed range of its numeric
fields in a class attribute `limits` (field name -> `Limit`); every instance is checked when it is
built (the command line, from_dict on a run's config.json, or Python), before any work, and a value
out of range raises ConfigError naming the class, the field, the value and the range:

    @dataclass(frozen=True)
    class PlannerConfig(Config):
        horizon: int = 12
        candidates: int = 1000
        elites: int = 100
        limits = ranges(counts="horizon candidates", elites=between(1, "candidates"))

`ranges` takes the common kinds as groups of field names (`counts`, `positive`, `non_negative`,
`fractions`: see KINDS) and any other range per field. A bound may name another field of the same
config ("candidates" above). A name in `limits` that is not a field of the class is refused when
the class is defined.

Moved settings. A config whose flat settings moved into a nested config names them in a class
attribute `moved_fields` (old name -> "field.setting", or a tuple of such places where one old
setting now stands in several); `from_dict` reads an older run's config.json through it:

    moved_fields = MappingProxyType({"grad_clip": ("tokenizer_optimizer.grad_clip", "world_model_optimizer.grad_clip")})

Settings added later. A field added with a default that changes the network (the paper's) names,
in a class attribute `older_runs`, the value that a config.json written before the field existed
was trained with; `from_dict` reads such a config.json with it, so the older run still loads:

    older_runs = MappingProxyType({"middle_blocks": 0})

A model's named sizes (a nested widths dataclass and its table of presets) are in wmlab.core.sizes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from wmlab.core.errors import ConfigError, WmlabError
from wmlab.core.sizes import fold_flat_widths

ConfigType = TypeVar("ConfigType")


@dataclasses.dataclass(frozen=True)
class Limit:
    """An interval for a numeric field: bounds are numbers, names of other fields, or None (open)."""

    low: float | str | None = None
    high: float | str | None = None
    low_open: bool = False
    """True: the value must be strictly above `low`."""
    high_open: bool = False
    """True: the value must be strictly below `high`."""

    def describe(self, config: Any = None) -> str:
        def bound(value):
            if isinstance(value, str):
                return value if config is None else f"{value} ({getattr(config, value)})"
            return repr(value)

        if self.high is None:
            return f"{'above' if self.low_open else 'at least'} {bound(self.low)}"
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {bound(self.high)}"
        return f"{'(' if self.low_open else '['}{bound(self.low)}, {bound(self.high)}{')' if self.high_open else ']'}"

    def admits(self, value: float, config: Any) -> bool:
        low = getattr(config, self.low) if isinstance(self.low, str) else self.low
        high = getattr(config, self.high) if isinstance(self.high, str) else self.high
        if isinstance(value, float) and math.isnan(value):
            return False
        if low is not None and (value <= low if self.low_open else value < low):
            return False
        return high is None or (value < high if self.high_open else value <= high)


def at_least(low: float | str) -> Limit:
    return Limit(low=low)


def above(low: float | str) -> Limit:
    return Limit(low=low, low_open=True)


def between(low: float | str, high: float | str, low_open: bool = False, high_open: bool = False) -> Limit:
    return Limit(low=low, high=high, low_open=low_open, high_open=high_open)


#: Shorthands for the ranges most fields have.
POSITIVE = above(0)
NON_NEGATIVE = at_least(0)
FRACTION = between(0, 1)
COUNT = at_least(1)

#: The kinds `ranges` takes as groups of field names.
KINDS: Mapping[str, Limit] = MappingProxyType(
    {"counts": COUNT, "positive": POSITIVE, "non_negative": NON_NEGATIVE, "fractions": FRACTION}
)


def ranges(**limits: Limit | str) -> Mapping[str, Limit]:
    """A config class's `limits`, read-only: field name -> Limit.

    A keyword of KINDS takes the names of the fields of that kind, separated by spaces
    (`counts="layers units"`); any other keyword is one field and its Limit."""
    table: dict[str, Limit] = {}
    for key, value in limits.items():
        if isinstance(value, str) and key in KINDS:
            names, limit = value.split(), KINDS[key]
        elif isinstance(value, Limit):
            names, limit = [key], value
        else:
            raise TypeError(f"ranges({key}=...): give a Limit, or field names under one of {', '.join(KINDS)}")
        for name in names:
            if name in table:
                raise TypeError(f"ranges: {name} is given two ranges")
            table[name] = limit
    return MappingProxyType(table)


class Config:
    """Base of wmlab's frozen dataclass configs: the ranges in `limits` (with those of the base
    classes) are checked at construction.

    A subclass that needs its own __post_init__ calls super().__post_init__() first."""

    limits: typing.ClassVar[Mapping[str, Limit]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass's ranges add to those of its bases (their fields are its fields).
        cls.limits = MappingProxyType(
            {name: limit for klass in cls.__mro__[::-1] for name, limit in vars(klass).get("limits", {}).items()}
        )
        # A misspelt name would otherwise fail only when an instance is built.
        declared = {name for klass in cls.__mro__ for name in inspect.get_annotations(klass)}
        unknown = sorted(set(cls.limits) - declared)
        if unknown:
            raise TypeError(f"{cls.__name__}.limits names no field: {', '.join(unknown)}")

    def __post_init__(self) -> None:
        check_limits(self)


def check_limits(config: Any) -> None:
    """Raise ConfigError for the first field of `config` outside its declared range (None passes:
    it means "derived from another setting")."""
    name = type(config).__name__
    for field_name, limit in type(config).limits.items():
        value = getattr(config, field_name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # A setting of the wrong type is bad input like one out of range: the same error.
            raise ConfigError(f"{name}.{field_name} = {value!r} is not a number; allowed: {limit.describe(config)}")  # noqa: TRY004
        if not limit.admits(value, config):
            raise ConfigError(f"{name}.{field_name} = {value!r} is out of range; allowed: {limit.describe(config)}")


def from_dict(cls: type[ConfigType], data: dict[str, Any]) -> ConfigType:
    """Build the (nested) dataclass `cls` from a dict; unknown keys raise ValueError naming them."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    data = _move_fields(cls, data)
    data = {**getattr(cls, "older_runs", {}), **data}
    data = fold_flat_widths(cls, data)  # a config.json from before the sizes were nested
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; fields are {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        field_type = _dataclass_in(hints[name])
        values[name] = (
            from_dict(field_type, value)
            if field_type is not None and isinstance(value, dict)
            else _restore_sequence(hints[name], value)
        )
    return cls(**values)


def _move_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the settings named in `cls.moved_fields` (an older config.json's) moved to their
    new places: each old value is written over the new field's default, in every place it moved to."""
    moved = getattr(cls, "moved_fields", {})
    if not set(data) & set(moved):
        return data
    data = dict(data)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for old_name, places in moved.items():
        if old_name not in data:
            continue
        value = data.pop(old_name)
        for place in (places,) if isinstance(places, str) else places:
            name, _, inner = place.partition(".")
            if name not in data:
                field = fields[name]
                default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
                data[name] = dataclasses.asdict(default)
            data[name] = {**data[name], inner: value}
    return data


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


def parse_json_object(flag: str, text: str, error: type[WmlabError] = WmlabError) -> dict[str, Any]:
    """A command-line option that holds a JSON object (`--env-kwargs`, `--agent-overrides`...);
    anything else raises `error` naming the option and the text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{flag} must be a JSON object, got {text!r} ({problem})") from None
    if not isinstance(value, dict):
        raise error(f"{flag} must be a JSON object, got {text!r}")
    return value
