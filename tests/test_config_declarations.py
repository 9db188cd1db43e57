"""Config declarations: every range names a field, kinds of range group field names, size tables read
as tables, and the training configs share their session options."""

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
    size_table,
    widths_from_preset,
)
from wmlab.core.errors import ConfigError


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
        config_class()  # the defaults are in range


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


@dataclasses.dataclass(frozen=True)
class Widths:
    width: int
    layers: int


def test_a_size_table_reads_rows_under_the_field_names():
    table = size_table(
        Widths,
        """
        size    tiny  cpu
        layers  2     4
        width   32    128
        """,
    )
    assert table == {"tiny": Widths(width=32, layers=2), "cpu": Widths(width=128, layers=4)}
    with pytest.raises(TypeError, match=r"it needs a row per field \(layers, width\) under size"):
        size_table(Widths, "size tiny\nwidth 32")
    with pytest.raises(TypeError, match=r"row layers has not one value per size \(2\)"):
        size_table(Widths, "size tiny cpu\nwidth 32 128\nlayers 2")


def test_the_size_tables_hold_the_papers_widths():
    from wmlab.models import latent_action, tokens

    # IRIS (arXiv:2209.00588, Appendix A): vocabulary 512 of 512-dimensional codes, 64 channels,
    # 2 residual blocks; 10 layers, 4 heads, width 256, 20 steps.
    assert tokens.SIZES["iris"] == tokens.TokenWidths(
        codebook_size=512,
        code_size=512,
        channels=64,
        residual_blocks=2,
        residual_max_side=4096,
        layers=10,
        heads=4,
        width=256,
        context=20,
    )
    assert list(tokens.SIZES) == ["tiny", "cpu", "iris"]
    # Genie: 1024 tokenizer codes of 32, 8 latent actions of 32, patches 4 and 16, 16 frames.
    genie = latent_action.SIZES["genie"]
    assert (genie.codebook_size, genie.code_size, genie.action_code_size) == (1024, 32, 32)
    assert (genie.patch, genie.action_patch, genie.context) == (4, 16, 16)
    assert list(latent_action.SIZES) == ["tiny", "cpu", "genie"]


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


def test_every_sized_width_is_a_config_field_that_the_size_fills():
    from wmlab.models import latent_action, tdmpc, tokens

    for config_class, table in (
        (tokens.TokenWorldModelConfig, tokens.SIZES),
        (latent_action.GenieConfig, latent_action.SIZES),
        (tdmpc.TDMPCModelConfig, tdmpc.PRESETS),
    ):
        defaults = {field.name: field.default for field in dataclasses.fields(config_class)}
        for size, widths in table.items():
            for field in dataclasses.fields(widths):
                assert defaults.get(field.name, "missing") is None, f"{config_class.__name__}.{field.name}"
            assert widths_from_preset(config_class(size=size), table, "any") == widths
