"""Named sizes: a model family's widths as one frozen dataclass, and a table of its named presets.

A family keeps the widths that a size fixes (layers, units, codebook sizes, ...) in a frozen
dataclass of its own, and its config holds one of them in a field `size` whose default is a
preset. The table names the presets and turns a name plus changed fields into widths, so that no
width is an optional field "taken from the size unless set":

    @dataclass(frozen=True)
    class TokenSizes(Config):
        width: int
        layers: int

    SIZES = SizeTable(TokenSizes, "token model", '''
        size    tiny  cpu
        width   32    128
        layers  2     4
    ''')

    @dataclass(frozen=True)
    class TokenWorldModelConfig:
        size: SIZES.annotation = SIZES["cpu"]

In Python, `SIZES["tiny"]` or `SIZES.preset("tiny", width=64)`; on the command line one option,
`--model.size tiny width=64` (the preset's name, then any changed fields); in a run's config.json
the widths themselves. A config.json written before the sizes were nested (a preset name in `size`
and the widths as fields of the config beside it, None where the preset's was meant) still loads:
`fold_flat_widths`, called by wmlab.core.config.from_dict, moves those fields into `size`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Generic, TypeVar

import tyro

from wmlab.core.errors import ConfigError

Widths = TypeVar("Widths")

#: Every table by the widths class it fills (from_dict finds the table of a field by its type).
_TABLES: dict[type, SizeTable] = {}


class SizeTable(Mapping[str, Widths], Generic[Widths]):
    """A family's named sizes, read from a text table: a header row `size` and the sizes' names,
    then one row per field of the `widths` dataclass (in any order) with its whole-number value in
    each size:

        size    tiny  cpu
        width   32    128
        layers  2     4
    """

    def __init__(self, widths: type[Widths], family: str, text: str):
        (corner, *sizes), *rows = (line.split() for line in text.strip().splitlines())
        names = sorted(field.name for field in dataclasses.fields(widths))
        if corner != "size" or sorted(row[0] for row in rows) != names:
            raise TypeError(
                f"size table of {widths.__name__}: it needs a row per field ({', '.join(names)}) under size"
            )
        for row in rows:
            if len(row) != len(sizes) + 1:
                raise TypeError(
                    f"size table of {widths.__name__}: row {row[0]} has not one value per size ({len(sizes)})"
                )
        self.widths, self.family = widths, family
        self.fields = tuple(field.name for field in dataclasses.fields(widths))
        self._presets = {
            size: widths(**{row[0]: int(row[column]) for row in rows}) for column, size in enumerate(sizes, start=1)
        }
        _TABLES[widths] = self

    def __getitem__(self, name: str) -> Widths:
        """The size `name`; an unknown name raises ConfigError listing the sizes (not KeyError:
        the name comes from the user), so `in` and `get` are answered here, not by catching it."""
        if name not in self._presets:
            raise ConfigError(f"unknown {self.family} size {name!r}; choose one of {', '.join(self._presets)}")
        return self._presets[name]

    def __contains__(self, name: object) -> bool:
        return name in self._presets

    def get(self, name: str, default: Any = None) -> Any:
        return self._presets.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._presets)

    def __len__(self) -> int:
        return len(self._presets)

    def preset(self, name: str, **changes: int) -> Widths:
        """The widths of the size `name` with the named fields changed."""
        unknown = sorted(set(changes) - set(self.fields))
        if unknown:
            raise ConfigError(
                f"{self.family} sizes have no field(s) {', '.join(unknown)}; fields are {', '.join(self.fields)}"
            )
        return dataclasses.replace(self[name], **changes)

    def parse(self, words: list[str]) -> Widths:
        """Widths from the words of the command line: a size's name, then FIELD=VALUE changes."""
        if not words or "=" in words[0]:
            raise ConfigError(
                f"a {self.family} size is a name ({', '.join(self._presets)}) followed by any changed"
                f" fields as FIELD=VALUE, e.g. {next(iter(self._presets))} {self.fields[0]}=64; got {' '.join(words)!r}"
            )
        changes = {}
        for word in words[1:]:
            name, equals, value = word.partition("=")
            name = name.replace("-", "_")
            if not equals or not value.lstrip("-").isdigit():
                raise ConfigError(
                    f"{self.family} size: expected FIELD=WHOLE_NUMBER after the size's name, got {word!r}"
                )
            changes[name] = int(value)
        return self.preset(words[0], **changes)

    def describe(self, widths: Widths) -> list[str]:
        """The words that `parse` reads back into `widths`: the nearest size's name and what differs."""

        def changed(name: str) -> list[str]:
            preset = self._presets[name]
            return [
                f"{field}={getattr(widths, field)}"
                for field in self.fields
                if getattr(preset, field) != getattr(widths, field)
            ]

        nearest = min(self._presets, key=lambda name: len(changed(name)))
        return [nearest, *changed(nearest)]

    @property
    def annotation(self) -> Any:
        """The type of a config's `size` field: the widths dataclass, read on the command line as
        one option `--...size NAME [FIELD=VALUE ...]`."""
        fields = ", ".join(self.fields)
        return Annotated[
            self.widths,
            tyro.constructors.PrimitiveConstructorSpec(
                nargs="*",
                metavar=f"{{{','.join(self._presets)}}} [FIELD=VALUE ...]",
                instance_from_str=self.parse,
                is_instance=lambda value: isinstance(value, self.widths),
                str_from_instance=self.describe,
            ),
            tyro.conf.arg(help_behavior_hint=lambda default: f"(default: {default}; fields: {fields})"),
        ]


def table_of(widths: type) -> SizeTable | None:
    """The size table of a widths dataclass, or None when it has none."""
    return _TABLES.get(widths)


def fold_flat_widths(config_class: type, data: dict[str, Any]) -> dict[str, Any]:
    """A config dict whose sized fields may still be written the old way, in this version's form.

    For each field of `config_class` whose type has a SizeTable: a name in it ("tiny") becomes that
    size's widths, None (the old RSSM's "every width set below") an empty dict, and every top-level
    key that names one of the widths' fields moves into it, None (the old "from the size") dropped.
    Data already in the new form passes unchanged."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        table = table_of(hints[field.name]) if isinstance(hints[field.name], type) else None
        if table is None:
            continue
        flat = {name: data[name] for name in table.fields if name in data and name not in _field_names(config_class)}
        if field.name not in data and not flat:
            continue
        value = data.get(field.name, dataclasses.asdict(field.default) if flat else None)
        if isinstance(value, str):
            value = dataclasses.asdict(table[value])
        elif value is None:
            value = {}
        widths = {**value, **{name: width for name, width in flat.items() if width is not None}}
        missing = [name for name in table.fields if name not in widths]
        if missing:
            raise ConfigError(f"{config_class.__name__}.{field.name}: no size gives {', '.join(missing)}")
        data = {key: item for key, item in data.items() if key not in flat}
        data[field.name] = widths
    return data


def _field_names(config_class: type) -> set[str]:
    return {field.name for field in dataclasses.fields(config_class)}
