"""MiniGrid and Crafter adapters, the Crafter score, and `describe_suites` for `wmlab envs`."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest

from wmlab.core.registry import UnknownNameError
from wmlab.envs.adapter import make_env
from wmlab.envs.crafter import ACHIEVEMENTS, achievement_success_rates, crafter_score

pytest.importorskip("minigrid")


# ---------------------------------------------------------------------- MiniGrid


@pytest.mark.parametrize("observation", ["rgb_full", "rgb_partial"])
def test_minigrid_images_are_64x64_uint8(observation):
    env = make_env("minigrid:DoorKey-5x5", observation=observation)
    assert env.observation_space["image"] == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gymnasium.spaces.Discrete(7)
    first, info = env.reset(seed=0)
    assert first.keys() == {"image"} and env.observation_space.contains(first)
    assert info["mission"] == "use the key to open the door and then get to the goal"
    after, reward, terminated, truncated, info = env.step(1)  # turn right: the view changes
    assert env.observation_space.contains(after) and not np.array_equal(first["image"], after["image"])
    assert (reward, terminated, truncated, info["success"]) == (0, False, False, False)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8


def test_minigrid_full_view_is_minigrids_own_drawing():
    """An 8 x 8 grid at 8 pixels a cell fills 64 x 64: pixel for pixel what MiniGrid draws."""
    from minigrid.wrappers import RGBImgObsWrapper

    ours = make_env("minigrid:DoorKey-8x8")
    theirs = RGBImgObsWrapper(gymnasium.make("MiniGrid-DoorKey-8x8-v0"), tile_size=8)
    assert np.array_equal(ours.reset(seed=3)[0]["image"], theirs.reset(seed=3)[0]["image"])
    for action in (2, 0, 2, 1):
        assert np.array_equal(ours.step(action)[0]["image"], theirs.step(action)[0]["image"])


def test_minigrid_small_grids_are_centred_without_resampling():
    """5 x 5 cells at 12 pixels each: 60 x 60 inside a 2-pixel black border."""
    from minigrid.wrappers import RGBImgObsWrapper

    image = make_env("minigrid:DoorKey-5x5").reset(seed=1)[0]["image"]
    drawn = RGBImgObsWrapper(gymnasium.make("MiniGrid-DoorKey-5x5-v0"), tile_size=12).reset(seed=1)[0]["image"]
    assert np.array_equal(image[2:62, 2:62], drawn)
    assert not image[:2].any() and not image[62:].any() and not image[:, :2].any() and not image[:, 62:].any()


def test_minigrid_symbolic_is_the_encoding_and_a_direction():
    env = make_env("minigrid:MiniGrid-DoorKey-5x5-v0", observation="symbolic")
    raw = gymnasium.make("MiniGrid-DoorKey-5x5-v0")
    space = env.observation_space["vector"]
    assert space.shape == (7 * 7 * 3 + 4,) and space.dtype == np.float32
    for ours, theirs in [(env.reset(seed=2)[0], raw.reset(seed=2)[0]), (env.step(0)[0], raw.step(0)[0])]:
        vector = ours["vector"]
        assert space.contains(vector)
        assert np.array_equal(vector[:147], theirs["image"].reshape(-1).astype(np.float32))
        assert np.array_equal(vector[147:], np.eye(4, dtype=np.float32)[theirs["direction"]])


def test_minigrid_ids_short_and_full_and_unknown():
    short = make_env("minigrid:DoorKey-5x5").reset(seed=4)[0]["image"]
    full = make_env("minigrid:MiniGrid-DoorKey-5x5-v0").reset(seed=4)[0]["image"]
    assert np.array_equal(short, full)
    with pytest.raises(UnknownNameError, match="minigrid:DoorKey-5x5"):
        make_env("minigrid:DoorKy-5x5")
    with pytest.raises(ValueError, match="observation must be one of"):
        make_env("minigrid:DoorKey-5x5", observation="pixels")


def test_minigrid_can_keep_only_the_first_actions():
    env = make_env("minigrid:Empty-5x5", num_actions=3)
    assert env.action_space == gymnasium.spaces.Discrete(3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(3)


def test_minigrid_success_is_reported_when_the_goal_is_reached():
    env = make_env("minigrid:Empty-5x5")
    env.reset(seed=0)
    # Empty-5x5 starts at the top-left facing right, with the goal in the opposite corner.
    for action in (2, 2, 1, 2):
        _, reward, terminated, _, info = env.step(action)
    assert not terminated and not info["success"]
    _, reward, terminated, _, info = env.step(2)
    assert terminated and reward > 0 and info["success"]


# ---------------------------------------------------------------------- Crafter


@pytest.fixture(scope="module")
def crafter_env():
    pytest.importorskip("crafter")
    return make_env("crafter:reward")


def test_crafter_spaces_reset_and_step(crafter_env):
    env = crafter_env
    assert env.observation_space["image"] == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gymnasium.spaces.Discrete(17)
    observation, info = env.reset(seed=0)
    assert env.observation_space.contains(observation) and info == {}
    again, _ = env.reset(seed=0)  # a seeded reset starts the same world again
    assert np.array_equal(observation["image"], again["image"])
    observation, reward, terminated, truncated, info = env.step(0)
    assert env.observation_space.contains(observation)
    assert isinstance(reward, float) and not terminated and not truncated
    assert set(info["achievements"]) == set(ACHIEVEMENTS)
    assert env.render().shape == (64, 64, 3)


def test_crafter_death_terminates(crafter_env):
    env = crafter_env
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(17)))
        if terminated or truncated:
            break
    assert terminated and not truncated and info["discount"] == 0.0


def test_crafter_length_limit_truncates_and_noreward_gives_zero():
    pytest.importorskip("crafter")
    env = make_env("crafter:noreward", length=5)
    env.reset(seed=0)
    for step in range(5):
        _, reward, terminated, truncated, _ = env.step(5)
        assert reward == 0.0 and not terminated
    assert truncated
    with pytest.raises(Exception, match="crafter:reward or crafter:noreward"):
        make_env("crafter:rewards")


def test_crafter_achievements_list_matches_the_library():
    crafter = pytest.importorskip("crafter")
    assert tuple(crafter.constants.achievements) == ACHIEVEMENTS


def test_crafter_score_on_hand_computed_rates():
    assert crafter_score({}) == 0.0
    assert crafter_score(dict.fromkeys(ACHIEVEMENTS, 100.0)) == pytest.approx(100.0)
    # Two achievements at 3 %: exp(2 ln 4 / 22) - 1 = 4^(1/11) - 1 = 0.134313...
    assert crafter_score({"collect_wood": 3.0, "place_table": 3.0}) == pytest.approx(0.1343133, abs=1e-6)
    # 50 % on every achievement: exp(ln 51) - 1 = 50.
    assert crafter_score(dict.fromkeys(ACHIEVEMENTS, 50.0)) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="not Crafter achievements"):
        crafter_score({"collect_gold": 1.0})


def test_achievement_success_rates_from_episode_infos():
    zeros = dict.fromkeys(ACHIEVEMENTS, 0)
    episodes = [
        {"achievements": {**zeros, "collect_wood": 3, "place_table": 1}},  # last info of an episode
        [{}, {"achievements": {**zeros, "collect_wood": 1}}],  # every info of an episode
        {**zeros, "collect_wood": 2},  # the achievements themselves
        {"achievements": zeros},
    ]
    rates = achievement_success_rates(episodes)
    assert rates["collect_wood"] == 75.0 and rates["place_table"] == 25.0 and rates["wake_up"] == 0.0
    assert crafter_score(rates) == pytest.approx(math.exp((math.log(76) + math.log(26)) / 22) - 1)


# ---------------------------------------------------------------------- wmlab envs, wmlab bench envs


def test_describe_suites_names_every_suite_and_how_to_install_it(monkeypatch):
    import importlib.util

    from wmlab.envs.suites import describe_suites

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "crafter" else real_find_spec(name, *rest)
    )
    rows = {row["suite"]: row for row in describe_suites(probe=False)}
    assert list(rows) == ["built-in", "gymnasium", "dmc", "atari", "minigrid", "crafter", "minatar"]
    assert not rows["crafter"]["available"] and rows["crafter"]["install"] == "pip install 'wmlab[crafter]'"
    assert rows["minigrid"]["available"] and rows["minigrid"]["install"] is None
    assert all(row["examples"] for row in rows.values())


def test_every_suite_the_adapter_makes_is_described_and_every_described_one_is_made():
    from wmlab.envs.adapter import SUITES
    from wmlab.envs.suites import DESCRIPTIONS, UNPREFIXED_MODULES

    assert set(DESCRIPTIONS) == set(SUITES) | set(UNPREFIXED_MODULES)
    assert not set(SUITES) & set(UNPREFIXED_MODULES)


def test_describe_suites_probes_the_real_spaces(monkeypatch):
    from wmlab.envs import suites as envs_extra

    for name in ("dmc", "atari", "crafter"):  # slow to build; the others show the mechanism
        monkeypatch.delitem(envs_extra.DESCRIPTIONS, name)
    rows = {row["suite"]: row for row in envs_extra.describe_suites(probe=True)}
    assert rows["minigrid"]["observation"] == "image (64, 64, 3) uint8 in [0, 255]"
    assert rows["minigrid"]["action"] == "Discrete(7)"
    assert rows["gymnasium"]["action"] == "Discrete(2)"


def test_overhead_benchmark_rows_have_the_documented_form():
    from wmlab.bench.envs_extra import measure_overhead

    row = measure_overhead("minigrid", steps=20, repetitions=1)
    assert set(row) == {"suite", "wmlab_steps_per_second", "raw_steps_per_second", "overhead_percent"}
    assert row["wmlab_steps_per_second"] > 0 and row["raw_steps_per_second"] > 0
