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
