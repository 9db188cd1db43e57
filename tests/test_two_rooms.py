"""The two-rooms navigation task: spaces, walls and door, rewards, pixels, exact resumption, expert."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmlab.envs.two_rooms import (
    AGENT_RGB,
    BACKGROUND_RGB,
    GOAL_RGB,
    MIDDLE_X,
    WALL_RGB,
    TwoRooms,
    TwoRoomsGeometry,
    make_two_rooms_pixels,
    make_two_rooms_state,
    scripted_action,
)


def run_expert(env: TwoRooms, seed: int) -> dict:
    env.reset(seed=seed)
    while True:
        _, _, terminated, truncated, info = env.step(scripted_action(env))
        if terminated or truncated:
            return info


def pixel_at(frame: np.ndarray, x: float, y: float) -> tuple[int, ...]:
    """The colour of the pixel containing the arena point (x, y); y points up, rows go down."""
    size = frame.shape[0]
    row = min(int((1.0 - y) * size), size - 1)
    column = min(int(x * size), size - 1)
    return tuple(int(value) for value in frame[row, column])


def test_spaces_and_dtypes():
    pixels = make_two_rooms_pixels()
    observation, info = pixels.reset(seed=0)
    assert pixels.observation_space.shape == (64, 64, 3) and pixels.observation_space.dtype == np.uint8
    assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8
    assert pixels.observation_space.contains(observation)
    assert pixels.action_space.shape == (2,)
    assert np.all(pixels.action_space.low == -1) and np.all(pixels.action_space.high == 1)

    state = make_two_rooms_state()
    observation, info = state.reset(seed=0)
    assert state.observation_space.shape == (5,) and state.observation_space.dtype == np.float32
    assert observation.dtype == np.float32 and state.observation_space.contains(observation)
    np.testing.assert_allclose(observation, [*info["agent"], *info["goal"], info["door"][1]], rtol=1e-6)
    assert set(info) >= {"success", "agent", "goal", "door"} and info["success"] is False


@pytest.mark.parametrize("factory", [make_two_rooms_pixels, make_two_rooms_state])
def test_passes_the_gymnasium_checker(factory):
    with warnings.catch_warnings():
        # Only environments made by gymnasium.make have a spec to try other render modes with.
        warnings.filterwarnings("ignore", message=".*alternative render modes.*")
        check_env(factory())


@pytest.mark.parametrize("max_step", [0.05, 0.3, 2.0])
def test_wall_blocks_the_agent_outside_the_door(max_step):
    env = make_two_rooms_state(max_step=max_step, max_episode_steps=1000)
    geometry = env.geometry
    door_y = 0.5
    corridor_low, corridor_high = geometry.corridor(door_y)
    for side in (-1, 1):
        toward_wall = -side
        x_low, x_high = geometry.room_x_range(side)
        for x in np.linspace(x_low, x_high, 5):
            for y in (0.05, 0.2, 0.3, corridor_low - 0.005, corridor_high + 0.005, 0.72, 0.95):
                # Straight at the wall, and diagonally while sliding away from the door.
                away_from_door = -1.0 if y < door_y else 1.0
                for action in ((toward_wall, 0.0), (toward_wall, away_from_door)):
                    env.reset(options={"door_y": door_y, "agent": (x, y), "goal": (0.5, door_y)})
                    for _ in range(30):
                        env.step(action)
                        agent_x, agent_y = env.agent_position
                        assert geometry.is_free(agent_x, agent_y, door_y)
                        assert (agent_x < MIDDLE_X) == (side < 0), (x, y, action)
                    # Pushed against the wall's face, not stopped short of it and not inside it.
                    wall_face = geometry.wall_left if side < 0 else geometry.wall_right
                    assert env.agent_position[0] == pytest.approx(wall_face)


def test_random_motion_never_enters_walls():
    for max_step in (0.05, 0.7):
        env = make_two_rooms_state(max_step=max_step, max_episode_steps=10_000)
        random = np.random.default_rng(0)
        env.reset(seed=1)
        for step in range(1500):
            # Alternate smooth and corner-seeking (saturated) actions.
            action = random.uniform(-1, 1, 2) if step % 2 else np.sign(random.uniform(-1, 1, 2))
            env.step(action)
            assert env.geometry.is_free(*env.agent_position, env.door_y)
            if step % 300 == 299:
                env.reset()


@pytest.mark.parametrize("start_x, direction", [(0.3, 1.0), (0.7, -1.0)])
def test_agent_passes_through_the_door(start_x, direction):
    env = make_two_rooms_state()
    door_y = 0.35
    env.reset(options={"door_y": door_y, "agent": (start_x, door_y + 0.03), "goal": (0.9, 0.9)})
    for _ in range(15):
        env.step((direction, 0.0))
    agent_x, agent_y = env.agent_position
    assert (agent_x - MIDDLE_X) * direction > 0.1
    assert agent_y == pytest.approx(door_y + 0.03)


def test_reaching_the_goal_pays_one_and_terminates():
    env = make_two_rooms_state()
    env.reset(options={"door_y": 0.5, "agent": (0.2, 0.2), "goal": (0.34, 0.2)})
    _, reward, terminated, truncated, info = env.step((1.0, 0.0))
    assert (reward, terminated, info["success"]) == (0.0, False, False)
    _, reward, terminated, truncated, info = env.step((1.0, 0.0))
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)


def test_dense_reward_is_the_decrease_of_the_path_length():
    env = make_two_rooms_state(reward="dense")
    _, info = env.reset(seed=4)
    distance = info["distance"]
    # Across the wall the path length goes via the door, so it exceeds the straight line.
    assert distance > np.hypot(*(info["goal"] - info["agent"])) - 1e-12
    total = 0.0
    while True:
        _, reward, terminated, truncated, info = env.step(scripted_action(env))
        total += reward
        if terminated or truncated:
            break
        assert reward == pytest.approx(distance - info["distance"])
        distance = info["distance"]
    assert info["success"]
    _, first_info = env.reset(seed=4)
    assert total == pytest.approx(first_info["distance"] - info["distance"] + 1.0)


def test_truncation_at_the_time_limit():
    env = make_two_rooms_state(max_episode_steps=5)
    env.reset(seed=0)
    for step in range(1, 6):
        _, _, terminated, truncated, info = env.step((0.0, 0.0))
        assert not terminated and truncated == (step == 5)
    assert info["success"] is False


def test_door_height_and_sides_vary_across_seeds():
    env = make_two_rooms_state()
    door_heights, agent_sides = set(), set()
    for seed in range(30):
        observation, info = env.reset(seed=seed)
        door_heights.add(round(float(env.door_y), 6))
        agent_side = info["agent"][0] < MIDDLE_X
        agent_sides.add(agent_side)
        # By default the goal lies in the other room.
        assert (info["goal"][0] < MIDDLE_X) != agent_side
        low, high = env.geometry.door_y_range
        assert low <= env.door_y <= high
    assert len(door_heights) == 30 and agent_sides == {True, False}

    same_room_allowed = make_two_rooms_state(goal_in_other_room=False)
    same_room = sum(
        (info["goal"][0] < MIDDLE_X) == (info["agent"][0] < MIDDLE_X)
        for info in (same_room_allowed.reset(seed=seed)[1] for seed in range(40))
    )
    assert 5 < same_room < 35


def test_frame_shows_agent_goal_and_wall():
    env = make_two_rooms_pixels()
    door_y = 0.6
    frame, _ = env.reset(options={"door_y": door_y, "agent": (0.2, 0.3), "goal": (0.8, 0.75)})
    assert pixel_at(frame, 0.2, 0.3) == AGENT_RGB
    assert pixel_at(frame, 0.8, 0.75) == GOAL_RGB
    assert pixel_at(frame, MIDDLE_X, 0.1) == WALL_RGB
    assert pixel_at(frame, MIDDLE_X, 0.95) == WALL_RGB
    assert pixel_at(frame, MIDDLE_X, door_y) == BACKGROUND_RGB
    assert pixel_at(frame, 0.05, 0.95) == BACKGROUND_RGB
    assert pixel_at(frame, 0.8, 0.3) == BACKGROUND_RGB
    # The agent is small: a few pixels, all near its position.
    rows, columns = np.nonzero(np.all(frame == AGENT_RGB, axis=-1))
    assert 4 <= len(rows) <= 30
    assert np.all(np.abs((columns + 0.5) / 64 - 0.2) < 0.05) and np.all(np.abs(1 - (rows + 0.5) / 64 - 0.3) < 0.05)

    np.testing.assert_array_equal(env.render(), frame)
    goal_frame = env.goal_observation()
    assert pixel_at(goal_frame, 0.8, 0.75) == AGENT_RGB
    assert pixel_at(goal_frame, 0.2, 0.3) == BACKGROUND_RGB


def test_state_mode_renders_and_gives_a_goal_vector():
    pixels, state = make_two_rooms_pixels(), make_two_rooms_state()
    frame, _ = pixels.reset(seed=7)
    vector, _ = state.reset(seed=7)
    np.testing.assert_array_equal(state.render(), frame)
    goal_x, goal_y = state.goal_position
    np.testing.assert_allclose(state.goal_observation(), [goal_x, goal_y, goal_x, goal_y, state.door_y], rtol=1e-6)


def test_state_round_trip_resumes_exactly():
    env = make_two_rooms_pixels(reward="dense")
    env.reset(seed=11)
    actions = np.random.default_rng(3).uniform(-1, 1, (40, 2))
    for action in actions[:10]:
        env.step(action)
    snapshot = json.loads(json.dumps(env.get_state()))

    def continue_from(environment: TwoRooms) -> list:
        """Observations, rewards and flags of 20 steps, a reset (from the saved random state) and 10 more."""
        outcomes = []
        for action in actions[10:30]:
            outcomes.extend(environment.step(action)[:4])
        outcomes.append(environment.reset()[0])
        for action in actions[30:]:
            outcomes.extend(environment.step(action)[:4])
        return outcomes

    expected = continue_from(env)
    restored = make_two_rooms_pixels(reward="dense")
    restored.set_state(snapshot)
    for want, got in zip(expected, continue_from(restored), strict=True):
        np.testing.assert_array_equal(want, got)

    with pytest.raises(ValueError, match="geometry"):
        make_two_rooms_pixels(door_height=0.3).set_state(snapshot)


def test_scripted_expert_succeeds_in_nearly_all_episodes():
    env = make_two_rooms_state()
    successes = sum(run_expert(env, seed)["success"] for seed in range(100))
    assert successes >= 95

    same_room = make_two_rooms_state(goal_in_other_room=False)
    assert sum(run_expert(same_room, seed)["success"] for seed in range(30)) >= 29


def test_expert_reads_the_environment_the_state_vector_or_a_snapshot_alike():
    env = make_two_rooms_state()
    observation, _ = env.reset(seed=5)
    from_env = scripted_action(env)
    assert from_env.dtype == np.float32 and np.all(np.abs(from_env) <= 1.0)
    np.testing.assert_allclose(scripted_action(observation), from_env, atol=1e-4)
    np.testing.assert_array_equal(scripted_action(env.get_state()), from_env)


def test_same_seed_gives_the_same_episode():
    def episode(seed: int) -> list[np.ndarray]:
        env = make_two_rooms_pixels()
        env.action_space.seed(seed)
        observations = [env.reset(seed=seed)[0]]
        for _ in range(20):
            observations.append(env.step(env.action_space.sample())[0])
        return observations

    first, second, other = episode(2), episode(2), episode(3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_reset_options_are_checked():
    env = make_two_rooms_state()
    with pytest.raises(ValueError, match="not a free position"):
        env.reset(options={"door_y": 0.5, "agent": (0.5, 0.1)})  # inside the wall
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"start": (0.2, 0.2)})
    _, info = env.reset(seed=0, options={"goal": (0.2, 0.4)})
    assert info["agent"][0] > MIDDLE_X  # the agent is drawn in the other room
    with pytest.raises(ValueError, match="door_height"):
        TwoRoomsGeometry(door_height=0.05, agent_radius=0.03)
