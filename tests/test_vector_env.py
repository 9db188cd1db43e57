"""Vector environments: what the collector stores equals a hand-driven single environment, per env.

CartPole with a 20-step limit under random actions ends episodes both ways within a few dozen
steps: by termination (the pole falls) and by truncation (the limit), so both auto-resets are
exercised.
"""

from __future__ import annotations

import numpy as np
import pytest

from wmlab.data.replay import ReplayBuffer
from wmlab.envs.adapter import make_env
from wmlab.envs.vector import VectorCollector, make_vector_env

ENV_ID = "CartPole-v1"
ENV_KWARGS = {"max_episode_steps": 20}
NUM_ENVS = 3
SEED = 5


def collect(asynchronous: bool, steps: int) -> tuple[list[dict], np.ndarray]:
    """The stored steps (one batched dict per call) and the actions given to the vector env."""
    envs = make_vector_env(ENV_ID, NUM_ENVS, asynchronous=asynchronous, seed=SEED, **ENV_KWARGS)
    collector = VectorCollector(envs)
    rng = np.random.default_rng(0)
    given = rng.integers(0, 2, size=(steps, NUM_ENVS))
    stored = [collector.reset()]
    for actions in given:
        assert collector.observations["is_first"].shape == (NUM_ENVS,)
        stored.append(collector.step(actions))
    collector.close()
    return stored, given


def reference_steps(env_index: int, stored: list[dict]) -> list[dict]:
    """Drive one environment by hand through what env_index's stream says happened."""
    env = make_env(ENV_ID, **ENV_KWARGS)
    observation, _ = env.reset(seed=SEED + env_index)
    steps = [dict(observation, reward=0.0, is_first=True, is_last=False, is_terminal=False)]
    for batch in stored[1:]:
        if batch["is_first"][env_index]:
            observation, _ = env.reset()
            steps.append(dict(observation, reward=0.0, is_first=True, is_last=False, is_terminal=False))
        else:
            action = int(batch["action"][env_index])
            observation, reward, terminated, truncated, _ = env.step(action)
            steps.append(
                dict(
                    observation, reward=reward, is_first=False, is_last=terminated or truncated, is_terminal=terminated
                )
            )
    return steps


@pytest.mark.parametrize("asynchronous", [False, True])
def test_stored_steps_equal_a_single_environment_rollout(asynchronous):
    stored, given = collect(asynchronous, steps=80)
    for env_index in range(NUM_ENVS):
        expected = reference_steps(env_index, stored)
        for t, (batch, step) in enumerate(zip(stored, expected)):
            assert np.array_equal(batch["vector"][env_index], step["vector"]), (env_index, t)
            assert batch["reward"][env_index] == np.float32(step["reward"])
            for flag in ("is_first", "is_last", "is_terminal"):
                assert batch[flag][env_index] == step[flag], (env_index, t, flag)
            # The action stored is the one that led here: none at a first step.
            if t > 0 and not step["is_first"]:
                assert batch["action"][env_index] == given[t - 1, env_index]
            else:
                assert batch["action"][env_index] == 0
    flags = {flag: np.stack([batch[flag] for batch in stored]) for flag in ("is_first", "is_last", "is_terminal")}
    # Every episode end is followed by a first step, and both kinds of end happened.
    ends = np.argwhere(flags["is_last"][:-1])
    assert all(flags["is_first"][t + 1, env] for t, env in ends)
    assert (flags["is_last"] & flags["is_terminal"]).any()
    assert (flags["is_last"] & ~flags["is_terminal"]).any()


def test_replay_episodes_are_neither_lost_nor_glued():
    stored, _ = collect(asynchronous=False, steps=40)
    replay = ReplayBuffer(num_envs=NUM_ENVS)
    for batch in stored:
        replay.add_batch(batch)
    episodes = list(replay.episodes())
    assert episodes
    for episode in episodes:
        assert episode["is_first"][0] and not episode["is_first"][1:].any()
        assert episode["is_last"][-1] and not episode["is_last"][:-1].any()
    # Every stored step is in the replay, and every episode end closed exactly one episode.
    assert len(replay) == len(stored) * NUM_ENVS
    assert len(episodes) == sum(int(batch["is_last"].sum()) for batch in stored)


def test_seed_applies_to_the_first_reset_only():
    envs = make_vector_env(ENV_ID, 2, seed=SEED)
    first, _ = envs.reset()
    envs.close()
    single = make_env(ENV_ID)
    for index in range(2):
        observation, _ = single.reset(seed=SEED + index)
        assert np.array_equal(first["vector"][index], observation["vector"])


def test_a_same_step_vector_env_is_refused():
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    envs = SyncVectorEnv([lambda: make_env(ENV_ID)], autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="NEXT_STEP"):
        VectorCollector(envs)
    envs.close()
