"""Atari through wmlab (frame skip with max-pooling, no-ops, life loss, time limit) and the scores."""

import importlib.util
import json

import gymnasium
import numpy as np
import pytest

from wmlab.core.errors import WmlabError
from wmlab.envs import make_env
from wmlab.envs.atari import area_resizer, make_atari
from wmlab.envs.atari_scores import (
    ATARI100K_SCORES,
    aggregate,
    canonical_game,
    human_normalized_score,
    interquartile_mean,
)

# --------------------------------------------------------------------------- human-normalised score


def test_random_scores_normalise_to_0_and_human_scores_to_1():
    assert len(ATARI100K_SCORES) == 26
    for game, (random_score, human_score) in ATARI100K_SCORES.items():
        assert human_normalized_score(game, random_score) == pytest.approx(0.0, abs=1e-12)
        assert human_normalized_score(game, human_score) == pytest.approx(1.0)
    assert human_normalized_score("Pong", -20.7) == 0.0
    assert human_normalized_score("Pong", 14.6) == pytest.approx(1.0)
    assert human_normalized_score("Breakout", 1.7 + 2 * (30.5 - 1.7)) == pytest.approx(2.0)


def test_game_names_are_read_loosely_and_unknown_ones_suggest():
    assert (
        canonical_game("ALE/MsPacman-v5")
        == canonical_game("ms_pacman")
        == canonical_game("atari:MsPacman")
        == "MsPacman"
    )
    with pytest.raises(KeyError, match="Breakout"):
        human_normalized_score("Breakot", 3.0)


def test_aggregate_over_games_and_runs():
    result = aggregate({"Pong": [-20.7, 14.6], "Breakout": 30.5, "Boxing": 0.1})
    # Per game: Pong 0.5 (mean of 0 and 1), Breakout 1, Boxing 0.
    assert result["normalized/Pong"] == pytest.approx(0.5)
    assert result["mean"] == pytest.approx(0.5)
    assert result["median"] == pytest.approx(0.5)
    assert result["games"] == 3
    # IQM over the 4 pooled runs [0, 0, 1, 1]: one cut from each end leaves [0, 1].
    assert result["iqm"] == pytest.approx(0.5)
    assert interquartile_mean([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(3.5)
    with pytest.raises(ValueError):
        aggregate({})
    with pytest.raises(ValueError):
        aggregate({"Pong": [float("nan")]})


# ------------------------------------------------------------------------------------- the emulator

# The score tests above need no emulator; these do.
requires_ale = pytest.mark.skipif(importlib.util.find_spec("ale_py") is None, reason="ale-py is not installed")


@requires_ale
def test_spaces_through_make_env():
    env = make_env("atari:Pong", seed=0)
    assert env.observation_space["image"] == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gymnasium.spaces.Discrete(6)
    observation, info = env.reset(seed=0)
    assert observation["image"].shape == (64, 64, 3) and observation["image"].dtype == np.uint8
    observation, reward, terminated, truncated, info = env.step(0)
    assert observation["image"].dtype == np.uint8 and isinstance(reward, float)
    assert not terminated and not truncated and info["lives"] == 0
    assert env.render().shape == (64, 64, 3)

    gray = make_env("atari:pong", grayscale=True, seed=0)
    assert gray.observation_space["image"].shape == (64, 64, 1)
    assert gray.reset(seed=0)[0]["image"].shape == (64, 64, 1)
    assert gray.render().shape == (64, 64, 3)


@requires_ale
def test_frame_skip_max_pools_the_last_two_of_four_frames_on_pong():
    env = make_atari("Pong", noop_max=0)
    env.reset(seed=0)
    ale, resize = env._ale, area_resizer(64, 3)[0]
    pooled_differs = 0
    for step in range(12):
        action = step % env.action_space.n
        before = ale.cloneState()
        frames_before = env.episode_frames
        observation, reward, *_ = env.step(action)
        assert env.episode_frames == frames_before + 4
        # Replay the same four frames by hand from the saved emulator state.
        ale.restoreState(before)
        screens, replayed_reward = [], 0.0
        for _ in range(4):
            replayed_reward += ale.act(env._actions[action])
            screens.append(ale.getScreenRGB())
        np.testing.assert_array_equal(observation, resize(np.maximum(screens[2], screens[3])))
        assert reward == replayed_reward
        pooled_differs += not np.array_equal(observation, resize(screens[3]))
    assert pooled_differs > 0  # the moving ball shows in both frames, so pooling matters


@requires_ale
def test_resets_play_1_to_30_noops():
    env = make_atari("Pong")
    env.reset(seed=0)
    frames = [env.episode_frames]
    for _ in range(7):  # unseeded resets draw from the generator the first reset seeded
        env.reset()
        frames.append(env.episode_frames)
    assert all(1 <= count <= 30 for count in frames) and len(set(frames)) > 1
    plain = make_atari("Pong", noop_max=0)
    plain.reset(seed=0)
    assert plain.episode_frames == 0


def play_until(env, condition, seed=0, limit=2000):
    generator = np.random.default_rng(seed)
    for _ in range(limit):
        result = env.step(int(generator.integers(env.action_space.n)))
        if condition(result):
            return result
    raise AssertionError("the condition never held")


@requires_ale
def test_life_loss_ends_the_training_episode_but_not_the_game():
    env = make_atari("Breakout", terminal_on_life_loss=True, seed=0)
    _, info = env.reset()
    assert info["lives"] == 5
    _, _, terminated, truncated, info = play_until(env, lambda result: result[2] or result[3])
    assert terminated and not truncated
    assert info["life_lost"] and info["lives"] == 4 and not info["game_over"]
    frames = env.episode_frames
    observation, info = env.reset()  # resumes the same game
    assert info["lives"] == 4 and env.episode_frames == frames
    env.step(1)
    assert env.episode_frames == frames + 4


@requires_ale
def test_without_the_flag_a_lost_life_does_not_end_the_episode():
    env = make_atari("Breakout", seed=0)
    env.reset()
    _, _, terminated, truncated, info = play_until(env, lambda result: result[4]["life_lost"])
    assert not terminated and not truncated and info["lives"] == 4


@requires_ale
def test_the_time_limit_truncates_by_emulator_frames():
    env = make_atari("Pong", noop_max=0, max_frames=100)
    env.reset(seed=0)
    for step in range(1, 40):
        _, _, terminated, truncated, _ = env.step(0)
        if truncated:
            break
    assert step == 25 and not terminated
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(0)


@requires_ale
def test_get_state_and_set_state_resume_exactly_through_json():
    env = make_atari("Breakout", terminal_on_life_loss=True, seed=1)
    env.reset()
    for action in [1, 2, 3, 1, 0, 2]:
        env.step(action)
    snapshot = json.loads(json.dumps(env.get_state()))
    actions = [3, 3, 1, 2, 0, 0, 1, 2]
    expected = [env.step(action) for action in actions]
    restored = make_atari("Breakout", terminal_on_life_loss=True)
    restored.set_state(snapshot)
    for action, (observation, reward, terminated, truncated, info) in zip(actions, expected):
        got = restored.step(action)
        np.testing.assert_array_equal(got[0], observation)
        assert got[1:] == (reward, terminated, truncated, info)


@requires_ale
def test_unknown_games_suggest_close_names():
    with pytest.raises(WmlabError, match="Breakout"):
        make_env("atari:Breakot")


@requires_ale
def test_benchmark_atari_row():
    from wmlab.bench.envs import CASES, _measure_case

    case = next(case for case in CASES if case.env_id.startswith("atari:"))
    row = _measure_case(case, quick=True, repetitions=1, advance=lambda steps, note="": None)
    assert row["suite"] == case.suite and row["wmlab_steps_per_second"] > 0 and row["raw_steps_per_second"] > 0
