"""One of each piece of glue: env-kwargs parsing, the action layout, the hidden-layer builder, GIFs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from PIL import Image

from wmlab.core.config import parse_json_object
from wmlab.core.errors import DatasetError, IncompatibleSpaceError, ShapeError, WmlabError
from wmlab.core.images import to_pixels
from wmlab.core.seeding import seeded
from wmlab.core.spaces import BoxBounds, action_layout
from wmlab.core.video import write_gif
from wmlab.nn.mlp import MLP, dense_layers


def test_env_kwargs_are_a_json_object_or_a_clear_error():
    assert parse_json_object("--env-kwargs", '{"reward": "dense"}') == {"reward": "dense"}
    with pytest.raises(WmlabError, match=r"--env-kwargs must be a JSON object, got '\[1\]'"):
        parse_json_object("--env-kwargs", "[1]")
    with pytest.raises(DatasetError, match="JSON object, got 'reward='"):
        parse_json_object("--env-kwargs", "reward=", DatasetError)


def test_action_layout_reads_every_supported_space_and_names_the_owner():
    assert action_layout(spaces.Discrete(4), "x") == (4, True)
    assert action_layout(spaces.Box(-1, 1, (3,)), "x", bounded=True) == (3, False)
    assert action_layout(spaces.Box(-np.inf, np.inf, (2,)), "x") == (2, False)
    with pytest.raises(IncompatibleSpaceError, match="the RSSM takes Discrete actions that start at 0"):
        action_layout(spaces.Discrete(4, start=1), "the RSSM")
    with pytest.raises(
        IncompatibleSpaceError, match="TD-MPC2 scales Box actions to \\[-1, 1\\] and needs finite bounds"
    ):
        action_layout(spaces.Box(-np.inf, np.inf, (2,)), "TD-MPC2", bounded=True)
    with pytest.raises(IncompatibleSpaceError, match="takes a bounded 1-D Box or a Discrete"):
        action_layout(spaces.Box(-1, 1, (2, 2)), "x", bounded=True)


def test_dense_layers_keep_the_parameter_names_of_each_builder():
    assert [type(block).__name__ for block in dense_layers(3, 4, 2, None, torch.nn.ReLU)] == [
        "Linear",
        "ReLU",
        "Linear",
        "ReLU",
    ]
    keys = list(MLP(5, 3, 16, 2, layer_norm=True).state_dict())
    assert keys[:4] == ["net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias"] and keys[-2:] == [
        "net.6.weight",
        "net.6.bias",
    ]
    assert MLP(5, None, 16, 0).features == 5


def test_gif_frames_last_the_given_milliseconds(tmp_path):
    frames = [np.full((8, 8, 3), 40 * index, np.uint8) for index in range(3)]
    write_gif(tmp_path / "videos" / "a.gif", frames, milliseconds_per_frame=100)
    image = Image.open(tmp_path / "videos" / "a.gif")
    assert image.n_frames == 3 and image.info["duration"] == 100
    write_gif(tmp_path / "empty.gif", [])
    assert not (tmp_path / "empty.gif").exists()


def test_discrete_actions_enter_models_as_one_hot_or_as_given():
    from wmlab.core.spaces import discrete_action_input

    sizes: dict[str, int] = {}
    encoded = discrete_action_input(torch.tensor([[0, 2]]), 3, ("B", "T"), sizes)
    assert encoded.tolist() == [[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]] and sizes == {"B": 1, "T": 2}
    relaxed = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
    assert discrete_action_input(relaxed, 3, ("B",), {}).dtype == torch.float32
    with pytest.raises(ShapeError, match="expected indices"):
        discrete_action_input(torch.zeros(2, 4), 3, ("B",), {})
    with pytest.raises(ShapeError, match=r"indices must lie in \[0, 3\), got \[0, 3\]"):
        discrete_action_input(torch.tensor([0, 3]), 3, ("B",), {}, check_range=True)


def test_box_bounds_map_actions_to_the_unit_range_and_back_on_any_device():
    bounds = BoxBounds(spaces.Box(np.array([-2.0, 0.0]), np.array([2.0, 10.0])))
    assert bounds.size == 2 and bounds.state_dict() == {}  # buffers, not checkpointed
    actions = torch.tensor([[-2.0, 0.0], [0.0, 5.0], [2.0, 10.0]])
    assert bounds.to_unit(actions).tolist() == [[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]
    assert torch.equal(bounds.from_unit(bounds.to_unit(actions)), actions)
    assert bounds.clamp(torch.tensor([3.0, -1.0])).tolist() == [2.0, 0.0]
    owner = torch.nn.Module()
    owner.bounds = bounds
    assert owner.to(torch.float64).bounds.centre.dtype == torch.float64  # follows its owner
    flat = BoxBounds(spaces.Box(np.array([1.0]), np.array([1.0])), min_half_range=1e-6)
    assert flat.half_range.item() == pytest.approx(1e-6)


def test_seeded_blocks_repeat_their_draws_and_leave_the_callers_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded(1):
        first = torch.rand(2)
    with seeded(1):
        assert torch.equal(torch.rand(2), first)
    assert torch.equal(torch.rand(3), expected)


def test_pixels_from_float_frames_are_clamped_rounded_and_keep_their_kind():
    values = [-0.2, 0.0, 0.6 / 255, 0.499, 1.0, 1.7]
    expected = [0, 0, 1, 127, 255, 255]
    from_tensor = to_pixels(torch.tensor(values).reshape(1, 6, 1))
    from_array = to_pixels(np.array(values, dtype=np.float64).reshape(1, 6, 1))
    assert from_tensor.dtype == torch.uint8 and from_tensor.shape == (1, 6, 1)
    assert from_array.dtype == np.uint8 and from_array.shape == (1, 6, 1)
    assert from_tensor.flatten().tolist() == expected and from_array.flatten().tolist() == expected
    already = np.arange(256, dtype=np.uint8)
    assert to_pixels(already) is already  # uint8 passes through, not divided or rescaled
