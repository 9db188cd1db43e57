"""Named sizes (wmlab.core.sizes): the tables, a preset by name with changed fields, the one
command-line option, and run directories written before the sizes were nested still load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from wmlab.cli import parse_train_arguments
from wmlab.core.config import from_dict
from wmlab.core.errors import ConfigError
from wmlab.core.sizes import SizeTable
from wmlab.models import latent_action, rssm, tdmpc, tokens
from wmlab.runs.directory import CONFIG_FILE, load_run_spec

#: Each family's config class and size table.
FAMILIES = {
    "tokens": (tokens.TokenWorldModelConfig, tokens.SIZES),
    "rssm": (rssm.RSSMConfig, rssm.SIZES),
    "latent_action": (latent_action.GenieConfig, latent_action.SIZES),
    "tdmpc": (tdmpc.TDMPCModelConfig, tdmpc.SIZES),
}

#: config.json contents written by wmlab before the sizes were nested (c8f8685), by the code named in each key.
BEFORE = json.loads((Path(__file__).parent / "data" / "configs_before_nested_sizes.json").read_text())


@dataclasses.dataclass(frozen=True)
class Widths:
    width: int
    layers: int


TABLE = SizeTable(
    Widths,
    "test model",
    """
    size    tiny  cpu
    layers  2     4
    width   32    128
    """,
)


def test_a_size_table_reads_rows_under_the_field_names():
    assert dict(TABLE) == {"tiny": Widths(width=32, layers=2), "cpu": Widths(width=128, layers=4)}
    with pytest.raises(TypeError, match=r"it needs a row per field \(layers, width\) under size"):
        SizeTable(Widths, "test model", "size tiny\nwidth 32")
    with pytest.raises(TypeError, match=r"row layers has not one value per size \(2\)"):
        SizeTable(Widths, "test model", "size tiny cpu\nwidth 32 128\nlayers 2")


def test_a_preset_by_name_with_changed_fields_and_bad_names_refused():
    assert TABLE["cpu"] == Widths(width=128, layers=4)
    assert "cpu" in TABLE and "huge" not in TABLE and TABLE.get("huge") is None
    assert TABLE.preset("tiny", width=64) == Widths(width=64, layers=2)
    with pytest.raises(ConfigError, match="unknown test model size 'huge'; choose one of tiny, cpu"):
        TABLE["huge"]
    with pytest.raises(ConfigError, match="unknown test model size 'huge'"):
        TABLE.preset("huge", width=64)
    with pytest.raises(ConfigError, match="test model sizes have no field.s. depth; fields are width, layers"):
        TABLE.preset("tiny", depth=3)


def test_the_command_line_words_read_and_write_back():
    assert TABLE.parse(["cpu"]) == TABLE["cpu"]
    assert TABLE.parse(["tiny", "width=64", "layers=3"]) == Widths(width=64, layers=3)
    assert TABLE.describe(Widths(width=64, layers=2)) == ["tiny", "width=64"]
    assert TABLE.describe(TABLE["cpu"]) == ["cpu"]
    with pytest.raises(ConfigError, match="a name .tiny, cpu. followed by any changed fields"):
        TABLE.parse(["width=64"])
    with pytest.raises(ConfigError, match="expected FIELD=WHOLE_NUMBER .* got 'width'"):
        TABLE.parse(["tiny", "width"])
    with pytest.raises(ConfigError, match="unknown test model size 'large'"):
        TABLE.parse(["large"])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_default_is_a_preset_and_every_preset_reads_back(family):
    config_class, table = FAMILIES[family]
    assert config_class().size in table.values()
    for name, widths in table.items():
        assert table.parse(table.describe(widths)) == widths and table.describe(widths) == [name]
        changed = table.preset(name, **{table.fields[0]: getattr(widths, table.fields[0]) + 1})
        assert table.parse(table.describe(changed)) == changed


def test_the_size_tables_hold_the_papers_widths():
    # IRIS (arXiv:2209.00588, Appendix A): vocabulary 512 of 512-dimensional codes, 64 channels,
    # 2 residual blocks; 10 layers, 4 heads, width 256, 20 steps.
    assert tokens.SIZES["iris"] == tokens.TokenSizes(
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


def test_the_train_command_takes_a_size_and_changed_fields():
    common = ["--algo", "tdmpc2", "--env", "two-rooms-state", "--run-dir", "unused"]
    spec = parse_train_arguments([*common, "--agent.model.size", "1M", "latent_size=16", "mlp_width=32"])[0]
    assert spec.agent.model.size == tdmpc.SIZES.preset("1M", latent_size=16, mlp_width=32)
    assert parse_train_arguments(common)[0].agent.model.size == tdmpc.SIZES["5M"]
    with pytest.raises(SystemExit):
        parse_train_arguments([*common, "--agent.model.size", "2M"])


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            'tokens TokenWorldModelConfig(size="tiny", context=4, stages=2)',
            tokens.TokenWorldModelConfig(size=tokens.SIZES.preset("tiny", context=4), stages=2),
        ),
        (
            'rssm RSSMConfig(size="tiny", units=24, stochastic_size=4)',
            rssm.RSSMConfig(size=rssm.SIZES.preset("tiny", units=24), stochastic_size=4),
        ),
        (
            'latent_action GenieConfig(size="tiny", patch=16)',
            latent_action.GenieConfig(size=latent_action.SIZES.preset("tiny", patch=16)),
        ),
        (
            'tdmpc TDMPCModelConfig(size="1M", latent_size=16)',
            tdmpc.TDMPCModelConfig(size=tdmpc.SIZES.preset("1M", latent_size=16)),
        ),
        ("rssm PlaNetConfig().model", None),  # size None and every width set: PlaNet's model
    ],
)
def test_a_model_config_written_before_the_nested_sizes_loads_as_the_same_config(key, expected):
    from wmlab.agents.planet.config import PlaNetConfig

    expected = PlaNetConfig().model if expected is None else expected
    config_class = type(expected)
    assert from_dict(config_class, BEFORE["models"][key]) == expected
    # and the new form round-trips
    assert from_dict(config_class, json.loads(json.dumps(dataclasses.asdict(expected)))) == expected


def test_an_old_form_that_leaves_a_width_unset_without_a_size_is_refused():
    old = dict(BEFORE["models"]["rssm PlaNetConfig().model"], units=None)
    with pytest.raises(ConfigError, match="RSSMConfig.size: no size gives units"):
        from_dict(rssm.RSSMConfig, old)


def test_a_run_directory_written_before_the_nested_sizes_loads(tmp_path):
    from wmlab.agents.dreamer.config import DreamerV1Config

    (tmp_path / CONFIG_FILE).write_text(json.dumps(BEFORE["dreamer_v1_run_config"]))
    spec = load_run_spec(tmp_path)
    v1 = DreamerV1Config()
    model = dataclasses.replace(v1.model, size=rssm.SIZES.preset("tiny", classes=0), stochastic_size=4)
    assert spec.agent == dataclasses.replace(v1, model=model)
    assert spec.algorithm == "dreamer-v1" and spec.train.steps == 60
