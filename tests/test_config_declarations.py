"""Config declarations: every range names a field, kinds of range group field names, and the
training configs share their session options (the size tables: test_sizes.py)."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import wmlab
from wmlab.core.config import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Config,
    at_least,
    ranges,
)
from wmlab.core.errors import ConfigError
from wmlab.core.sizes import table_of


def all_config_classes() -> list[type[Config]]:
    """Every Config subclass defined in wmlab (each module imported once)."""
    for module in pkgutil.walk_packages(wmlab.__path__, "wmlab."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found, pending = [], [Config]
    while pending:
        for subclass in pending.pop().__subclasses__():
            if subclass.__module__.startswith("wmlab.") and subclass not in found:
                found.append(subclass)
                pending.append(subclass)
    return found


def test_every_range_of_every_config_names_its_fields():
    classes = all_config_classes()
    assert len(classes) > 25
    for config_class in classes:
        assert dataclasses.is_dataclass(config_class), config_class
        fields = {field.name for field in dataclasses.fields(config_class)}
        for name, limit in config_class.limits.items():
            assert name in fields, f"{config_class.__name__}.limits: {name}"
            for bound in (limit.low, limit.high):
                assert not isinstance(bound, str) or bound in fields, f"{config_class.__name__}.{name}: {bound}"
        table = table_of(config_class)
        if table is None:
            config_class()  # the defaults are in range
        else:  # a model's widths have no defaults: its named sizes are built (and checked) on import
            assert all(isinstance(widths, config_class) for widths in table.values())


def test_ranges_group_field_names_by_kind():
    limits = ranges(counts="layers units", positive="rate", non_negative="clip", fractions="mix", floor=at_least(2))
    assert dict(limits) == {
        "layers": COUNT,
        "units": COUNT,
        "rate": POSITIVE,
        "clip": NON_NEGATIVE,
        "mix": FRACTION,
        "floor": at_least(2),
    }
    with pytest.raises(TypeError, match="units is given two ranges"):
        ranges(counts="units", positive="units")
    with pytest.raises(TypeError, match="give a Limit"):
        ranges(sizes="units")


def test_a_misspelt_range_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match="Settings.limits names no field: unit"):

        @dataclasses.dataclass(frozen=True)
        class Settings(Config):
            units: int = 4
            limits = ranges(counts="unit")

    @dataclasses.dataclass(frozen=True)
    class Base(Config):
        units: int = 4

    @dataclasses.dataclass(frozen=True)
    class Derived(Base):  # a range may name an inherited field
        limits = ranges(counts="units")

    with pytest.raises(ConfigError, match="Derived.units = 0 is out of range; allowed: at least 1"):
        Derived(units=0)


def test_both_trainers_share_the_session_options_and_their_ranges():
    from wmlab.runs.config import OfflineTrainConfig, SessionConfig, TrainConfig

    session = [field.name for field in dataclasses.fields(SessionConfig)]
    assert session == ["device", "threads", "progress", "tensorboard"]
    for config_class in (TrainConfig, OfflineTrainConfig):
        assert [field.name for field in dataclasses.fields(config_class)][: len(session)] == session
        with pytest.raises(ConfigError, match=rf"{config_class.__name__}.threads = -1 is out of range"):
            config_class(threads=-1)
    with pytest.raises(ConfigError, match=r"TrainConfig.steps = 0 is out of range"):
        TrainConfig(steps=0)
