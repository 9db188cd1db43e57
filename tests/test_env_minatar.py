"""MinAtar as an environment suite: ids, the channel frame as a uint8 image, seeding, actions,
bad names; skipped when the `minatar` package is missing."""

import numpy as np
import pytest

pytest.importorskip("minatar", reason="MinAtar is an optional suite: pip install 'wmlab[minatar]'")

from wmlab.core.errors import WmlabError  # noqa: E402
from wmlab.envs.adapter import make_env  # noqa: E402
from wmlab.envs.suites import describe_suites  # noqa: E402


def test_breakout_frames_are_uint8_channel_images():
    env = make_env("minatar:breakout")
    space = env.observation_space["image"]
    assert space.shape == (10, 10, 4) and space.dtype == np.uint8
    assert env.action_space.n == 3  # Breakout's minimal set: no-op, left, right
    observation, _ = env.reset(seed=0)
    assert observation["image"].shape == (10, 10, 4) and set(np.unique(observation["image"])) <= {0, 255}
    total, steps, done = 0.0, 0, False
    while not done and steps < 500:
        observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total, steps, done = total + reward, steps + 1, terminated or truncated
    assert done  # a random Breakout player loses the ball
    assert env.render().shape == (10, 10, 3)


def test_seeded_resets_replay_and_size_upscales():
    first = make_env("minatar:SpaceInvaders", size=16)
    second = make_env("minatar:space-invaders", size=16)
    frames = []
    for env in (first, second):
        observation, _ = env.reset(seed=3)
        run = [observation["image"]]
        for action in [0, 1, 2, 3] * 5:
            run.append(env.step(action % env.action_space.n)[0]["image"])
        frames.append(np.stack(run))
    assert frames[0].shape[1:] == (16, 16, 6)
    assert np.array_equal(frames[0], frames[1])


def test_unknown_games_and_the_suite_listing():
    with pytest.raises(WmlabError, match="Did you mean: breakout"):
        make_env("minatar:breakou")
    with pytest.raises(WmlabError, match="at least 10"):
        make_env("minatar:breakout", size=8)
    row = next(row for row in describe_suites(probe=False) if row["suite"] == "minatar")
    assert row["available"] and "minatar:breakout" in row["examples"]


def test_the_token_model_takes_minatar_frames_with_one_stage():
    import torch

    from wmlab.core.errors import IncompatibleSpaceError
    from wmlab.core.types import Batch
    from wmlab.models.tokens import SIZES, TokenWorldModel, TokenWorldModelConfig

    env = make_env("minatar:breakout")
    with pytest.raises(IncompatibleSpaceError, match="divisible by 16; got 10 x 10"):
        TokenWorldModel(TokenWorldModelConfig(size=SIZES["tiny"], stages=4), env.observation_space, env.action_space)
    with pytest.raises(IncompatibleSpaceError, match="4 x 4 grid.*got 10 x 10"):
        TokenWorldModel(TokenWorldModelConfig(size=SIZES["tiny"]), env.observation_space, env.action_space)
    model = TokenWorldModel(
        TokenWorldModelConfig(size=SIZES["tiny"], stages=1), env.observation_space, env.action_space
    )
    assert model.tokens_per_frame == 25  # 5 x 5 tokens of a 10 x 10 frame
    frames, actions = [env.reset(seed=0)[0]["image"]], [0]
    for _ in range(3):
        action = env.action_space.sample()
        frames.append(env.step(action)[0]["image"])
        actions.append(action)
    is_first = np.array([[True, False, False, False]])
    batch = Batch(
        {"image": np.stack(frames)[None]},
        np.array([actions]),
        np.zeros((1, 4), np.float32),
        is_first,
        np.zeros((1, 4), bool),
        np.zeros((1, 4), bool),
    )
    loss, metrics = model.loss(batch)
    assert torch.isfinite(loss) and metrics["wm/reconstruction_psnr"] > 0
    assert model.decode({"tokens": torch.zeros(2, 25, dtype=torch.long)})["image"].shape == (2, 10, 10, 4)
