"""dm_control through wmlab: spaces, action repeat, the time limit, pixels, seeding, exact resume."""

import json
import os
import subprocess
import sys

import gymnasium
import numpy as np
import pytest

pytest.importorskip("dm_control")

from wmlab.core.errors import WmlabError  # noqa: E402
from wmlab.envs import make_env  # noqa: E402
from wmlab.envs.dmc import PLANET_ACTION_REPEAT, make_dmc  # noqa: E402


def random_actions(env, count, seed=0):
    generator = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    return [generator.uniform(low, high).astype(np.float32) for _ in range(count)]


def test_state_observations_are_a_float32_vector_in_the_tasks_key_order():
    env = make_env("dmc:cartpole-swingup", seed=0)
    assert env.observation_space["vector"].shape == (5,)
    assert env.unwrapped.state_layout == (("position", 3), ("velocity", 2))
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    observation, _ = env.reset(seed=0)
    assert set(observation) == {"vector"}
    assert observation["vector"].dtype == np.float32 and observation["vector"].shape == (5,)
    observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert observation["vector"].dtype == np.float32
    assert isinstance(reward, float) and not terminated and not truncated
    # The vector is the task's observations, concatenated in that order.
    expected = env.unwrapped._env.task.get_observation(env.unwrapped.physics)
    np.testing.assert_array_equal(
        observation["vector"], np.concatenate([expected["position"], expected["velocity"]]).astype(np.float32)
    )


def test_pixel_and_both_modes_render_64_by_64_rgb_frames():
    pixels = make_env("dmc:walker-walk", observation="pixels", seed=0)
    assert pixels.observation_space["image"] == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    observation, _ = pixels.reset(seed=0)
    assert observation["image"].shape == (64, 64, 3) and observation["image"].dtype == np.uint8
    observation, *_ = pixels.step(pixels.action_space.sample())
    assert observation["image"].std() > 0  # a picture, not a blank buffer
    np.testing.assert_array_equal(pixels.render(), observation["image"])

    both = make_env("dmc:walker-walk", observation="both", seed=0)
    observation, _ = both.reset(seed=0)
    assert set(observation) == {"image", "vector"}
    assert observation["vector"].shape == (24,) and observation["image"].shape == (64, 64, 3)


def test_render_in_state_mode_and_frames_with_full_effects_differ():
    fast = make_dmc("cartpole-swingup", seed=0)
    fast.reset(seed=0)
    frame = fast.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    full = make_dmc("cartpole-swingup", seed=0, fast_render=False)
    full.reset(seed=0)
    assert not np.array_equal(full.render(), frame)  # shadows, reflections and skybox drawn
    small = make_dmc("cartpole-swingup", size=32)
    small.reset(seed=0)
    assert small.render().shape == (32, 32, 3)


def test_cartpole_with_repeat_8_is_truncated_after_125_agent_steps():
    env = make_env("dmc:cartpole-swingup", seed=0)
    assert env.unwrapped.action_repeat == 8
    env.reset(seed=0)
    for step in range(1, 200):
        _, _, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        assert not terminated
        if truncated:
            break
    assert step == 125 and env.unwrapped.elapsed_steps == 1000
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(1, np.float32))


def test_a_limit_inside_a_repeat_shortens_the_last_step_to_keep_1000_control_steps():
    env = make_dmc("ball_in_cup-catch", seed=0)
    assert env.action_repeat == 6
    env.reset(seed=0)
    steps = 0
    truncated = False
    while not truncated:
        *_, truncated, _ = env.step(np.zeros(2, np.float32))
        steps += 1
    assert steps == 167 and env.elapsed_steps == 1000  # ceil(1000 / 6)


def test_action_repeat_sums_the_rewards_of_the_repeated_steps():
    repeated = make_dmc("cheetah-run", action_repeat=4, seed=3)
    single = make_dmc("cheetah-run", action_repeat=1, seed=3)
    repeated.reset(seed=3)
    single.reset(seed=3)
    for action in random_actions(repeated, 5):
        observation, reward, *_ = repeated.step(action)
        steps = [single.step(action) for _ in range(4)]
        assert reward == pytest.approx(sum(step[1] for step in steps), abs=1e-12)
        np.testing.assert_array_equal(observation, steps[-1][0])
    assert repeated.elapsed_steps == single.elapsed_steps == 20


def test_default_repeats_follow_planets_table_and_can_be_overridden():
    assert PLANET_ACTION_REPEAT == {
        "cartpole": 8,
        "walker": 2,
        "cheetah": 4,
        "finger": 2,
        "reacher": 4,
        "ball_in_cup": 6,
    }
    assert make_dmc("finger-spin").action_repeat == 2
    assert make_dmc("reacher-easy").action_repeat == 4
    assert make_dmc("cup-catch").task_id == "ball_in_cup-catch"
    assert make_dmc("cartpole-swingup", action_repeat=2).action_repeat == 2
    assert make_dmc("pendulum-swingup").action_repeat == 2  # outside PlaNet's table


def test_bad_ids_and_settings_say_what_to_do():
    with pytest.raises(WmlabError, match="cartpole-swingup"):
        make_env("dmc:cartpole-swingupp")
    with pytest.raises(WmlabError, match="domain-task"):
        make_env("dmc:walker_walk")
    with pytest.raises(ValueError, match="observation"):
        make_dmc("cartpole-swingup", observation="rgb")
    with pytest.raises(ValueError, match="action_repeat"):
        make_dmc("cartpole-swingup", action_repeat=0)
    env = make_dmc("cartpole-swingup")
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(1, np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], np.float32))


def test_seeds_fix_the_initial_state():
    env = make_dmc("reacher-easy")
    first, _ = env.reset(seed=7)
    again, _ = env.reset(seed=7)
    other, _ = env.reset(seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.array_equal(make_dmc("reacher-easy", seed=7).reset()[0], first)


def test_get_state_and_set_state_resume_exactly_through_json():
    env = make_dmc("reacher-easy", observation="both", seed=3)
    env.reset()
    actions = random_actions(env, 16)
    for action in actions[:8]:
        env.step(action)
    snapshot = json.loads(json.dumps(env.get_state()))
    assert "geom_pos" in snapshot["model"]  # the target's position lives in the model
    expected = [env.step(action) for action in actions[8:]]
    expected_next_episode, _ = env.reset()

    restored = make_dmc("reacher-easy", observation="both", seed=99)
    restored.set_state(snapshot)
    for action, (observation, reward, terminated, truncated, _) in zip(actions[8:], expected):
        got = restored.step(action)
        np.testing.assert_array_equal(got[0]["image"], observation["image"])
        np.testing.assert_array_equal(got[0]["vector"], observation["vector"])
        assert got[1:4] == (reward, terminated, truncated)
    np.testing.assert_array_equal(restored.reset()[0]["vector"], expected_next_episode["vector"])

    with pytest.raises(ValueError, match="reacher-easy"):
        make_dmc("cartpole-swingup").set_state(snapshot)


def test_importing_the_module_chooses_egl_unless_the_user_chose():
    if not sys.platform.startswith("linux"):
        pytest.skip("EGL is chosen on Linux only")
    code = "import os, wmlab.envs.dmc; print(os.environ['MUJOCO_GL'])"
    environment = {key: value for key, value in os.environ.items() if key != "MUJOCO_GL"}
    chosen = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "egl"
    kept = subprocess.run(
        [sys.executable, "-c", code],
        env={**environment, "MUJOCO_GL": "osmesa"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert kept.stdout.strip() == "osmesa"


def test_benchmark_rows_and_tables_can_be_extended():
    from wmlab.bench.envs import CASES, _measure_case, envs_tables, format_envs_table

    row = _measure_case(CASES[0], quick=True, repetitions=1, advance=lambda steps, note="": None)
    assert row["wmlab_steps_per_second"] > 0 and row["raw_steps_per_second"] > 0
    assert row["overhead_percent"] == pytest.approx((row["ratios"][0] - 1) * 100, abs=0.1)
    results = {"settings": {"repetitions": 1}, "rows": [row], "render": []}
    results["rows"].append(
        {"suite": "minigrid rgb", "wmlab_steps_per_second": 1.0, "raw_steps_per_second": 2.0, "overhead_percent": 100.0}
    )
    assert [table_row[0] for table_row in envs_tables(results)[0]["rows"]] == [row["suite"], "minigrid rgb"]
    assert "minigrid rgb" in format_envs_table(results)
