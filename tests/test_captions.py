"""Captioned two-rooms episodes (wmlab.data.captions): true captions from the state, the dataset
on disk, refusal of a caption file that does not match its episodes, and a text-conditioned token
model's loss on per-step captions."""

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.data.captions import (
    CAPTIONS,
    MOVE_DIRECTIONS,
    caption_step,
    load_captioned,
    record_captioned_two_rooms,
)
from wmlab.data.dataset import DatasetError, load_dataset
from wmlab.models.tokens import SIZES, TokenWorldModel, TokenWorldModelConfig

torch.set_num_threads(1)


def test_captions_follow_the_state():
    step = 0.05
    assert caption_step((0.2, 0.5), (0.15, 0.5), False, False, step) == "move left"
    assert caption_step((0.2, 0.5), (0.25, 0.49), False, False, step) == "move right"
    assert caption_step((0.2, 0.5), (0.21, 0.55), False, False, step) == "move up"  # y points up
    assert caption_step((0.2, 0.5), (0.2, 0.45), False, False, step) == "move down"
    assert caption_step((0.48, 0.5), (0.52, 0.5), False, False, step) == "pass through the door"
    assert caption_step((0.2, 0.5), (0.2, 0.5), False, False, step) == "stay still"
    assert caption_step((0.7, 0.5), (0.72, 0.5), True, False, step) == "reach the goal"


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    directory = tmp_path_factory.mktemp("captions") / "two-rooms"
    record_captioned_two_rooms(directory, episodes=6, seed=0, max_episode_steps=30)
    return directory


def test_recorded_captions_are_true_and_load(captioned):
    dataset = load_captioned(captioned)
    assert len(dataset.episodes) == 6 and set(dataset.vocabulary) == set(CAPTIONS)
    for episode, captions in zip(dataset.episodes, dataset.captions):
        assert len(captions) == len(episode["reward"]) and captions[0] == "start"
        # "reach the goal" exactly where the episode ends at the goal.
        assert (np.array(captions) == "reach the goal").tolist() == episode["is_terminal"].tolist()
    batch, captions = dataset.sample(batch_size=3, length=5)
    assert batch.obs["image"].shape == (3, 5, 64, 64, 3) and batch.action.shape == (3, 5, 2)
    assert len(captions) == 3 and all(len(row) == 5 for row in captions)
    assert load_dataset(captioned).num_episodes == 6  # an ordinary offline dataset too


def test_a_caption_file_that_does_not_match_its_episodes_is_refused(captioned, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(captioned, copy)
    path = copy / "captions.json"
    content = json.loads(path.read_text())
    content["episodes"][1]["steps"] = content["episodes"][1]["steps"][:-1]
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="steps but .* captions"):
        load_captioned(copy)
    content["episodes"] = content["episodes"][:-1]
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="captions missing for"):
        load_captioned(copy)
    path.unlink()
    with pytest.raises(DatasetError, match="without captions"):
        load_captioned(copy)


def test_text_conditioned_loss_on_per_step_captions(captioned):
    dataset = load_captioned(captioned)
    batch, captions = dataset.sample(batch_size=2, length=4)
    table = {caption: torch.randn(8) for caption in dataset.vocabulary}  # stands in for the sentence encoder
    text = torch.stack([torch.stack([table[caption] for caption in row]) for row in captions])  # (B, T, Dt)
    config = TokenWorldModelConfig(
        size=SIZES["tiny"],
        dropout=0.0,
        continuous_actions=True,
        reward_head="twohot",
        text_size=8,
        text_dropout=0.5,
        action_dropout=0.5,
    )
    model = TokenWorldModel(
        config, spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)}), spaces.Box(-1, 1, (2,), np.float32)
    )
    loss, metrics = model.loss(batch, text=text)
    assert np.isfinite(loss.item()) and metrics["loss/tokens"] > 0


def test_each_move_direction_moves_the_agent_as_its_caption_says():
    from wmlab.envs.adapter import make_env

    env = make_env("two-rooms")
    world = env.unwrapped
    for move, direction in MOVE_DIRECTIONS.items():
        captions = []
        for seed in range(6):
            env.reset(seed=seed)
            before = world.agent_position
            _, _, _, _, info = env.step(np.asarray(direction, np.float32) * 0.8)
            after = world.agent_position
            captions.append(
                caption_step(
                    before, after, bool(info["success"]), world.geometry.in_wall_band(after[0]), world.geometry.max_step
                )
            )
        # a start against a wall may leave the agent still; every step that moves goes the named way
        moved = [caption for caption in captions if caption in MOVE_DIRECTIONS]
        assert len(moved) >= 4 and set(moved) == {move}, (move, captions)
    env.close()
