"""The chapter-8 mazes: layouts, dynamics, the wall changes, rendering and exact resumption."""

import json
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmlab.envs.mazes import BlockingMaze, DynaMaze, ShortcutMaze

UP, DOWN, RIGHT, LEFT = 0, 1, 2, 3


def test_dyna_maze_spaces_and_start():
    env = DynaMaze()
    assert env.observation_space.n == 6 * 9 and env.action_space.n == 4
    observation, info = env.reset(seed=0)
    assert observation == 2 * 9 + 0  # start (2, 0), index row * columns + column
    assert env.goal_index == 8
    assert env.layout.shortest_path_length() == 14


def test_walls_and_edges_leave_the_agent_in_place():
    env = DynaMaze()
    env.reset()
    assert env.step(LEFT)[0] == env.index((2, 0))  # the left edge
    assert env.step(RIGHT)[0] == env.index((2, 1))
    observation, reward, terminated, truncated, _ = env.step(RIGHT)  # (2, 2) is a wall
    assert (observation, reward, terminated, truncated) == (env.index((2, 1)), 0.0, False, False)
    assert env.successor(env.index((3, 5)), DOWN) == env.index((3, 5))  # wall (4, 5)
    assert env.successor(env.index((5, 4)), DOWN) == env.index((5, 4))  # the bottom edge


def test_a_shortest_path_reaches_the_goal_with_reward_one():
    env = DynaMaze()
    env.reset()
    path = [RIGHT, DOWN, DOWN, RIGHT, RIGHT, UP] + [RIGHT] * 5 + [UP] * 3
    rewards = []
    for step, action in enumerate(path):
        observation, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        assert terminated == (step == len(path) - 1)
    assert observation == env.goal_index and rewards[-1] == 1.0 and sum(rewards) == 1.0


def test_truncation_after_max_episode_steps():
    env = DynaMaze(max_episode_steps=3)
    env.reset()
    flags = [env.step(LEFT)[3] for _ in range(3)]
    assert flags == [False, False, True]
    env.reset()
    assert env.episode_steps == 0 and env.total_steps == 3


def test_blocking_maze_wall_moves_after_change_step_counted_across_episodes():
    env = BlockingMaze(change_step=4)
    below_gap, below_left_end = env.index((4, 8)), env.index((4, 0))
    env.reset()
    assert env.successor(below_gap, UP) == env.index((3, 8))  # open before the change
    assert env.successor(below_left_end, UP) == below_left_end  # wall before the change
    env.step(LEFT)
    env.step(LEFT)
    env.reset()  # a reset does not restart the clock
    env.step(LEFT)
    assert not env.walls_changed
    env.step(LEFT)  # the fourth step: from the fifth on, the new walls hold
    assert env.walls_changed
    assert env.successor(below_gap, UP) == below_gap
    assert env.successor(below_left_end, UP) == env.index((3, 0))


def test_shortcut_maze_opens_after_change_step():
    env = ShortcutMaze(change_step=2)
    below_gap = env.index((4, 8))
    env.reset()
    assert env.successor(below_gap, UP) == below_gap
    assert env.successor(env.index((4, 0)), UP) == env.index((3, 0))  # the long way is always open
    env.step(LEFT)
    env.step(LEFT)
    assert env.successor(below_gap, UP) == env.index((3, 8))
    assert env.layout.shortest_path_length() == 16 and env.later_layout.shortest_path_length() == 10


def test_book_default_change_steps():
    assert BlockingMaze().change_step == 1000 and ShortcutMaze().change_step == 3000


def test_resolution_splits_every_cell():
    env = DynaMaze(resolution=2)
    assert (env.layout.rows, env.layout.columns) == (12, 18)
    assert env.layout.open_cells == 4 * DynaMaze().layout.open_cells
    assert env.layout.start == (4, 0) and env.layout.goal == (0, 16)
    assert env.layout.shortest_path_length() > DynaMaze().layout.shortest_path_length()


def test_render_is_a_small_rgb_image():
    env = DynaMaze(render_mode="rgb_array")
    env.reset()
    image = env.render()
    assert image.dtype == np.uint8 and image.shape == (6 * env.cell_pixels, 9 * env.cell_pixels, 3)
    assert DynaMaze().render() is None


@pytest.mark.parametrize("maze", [DynaMaze, BlockingMaze, ShortcutMaze])
def test_gymnasium_env_checker_passes(maze):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker warns that an unregistered env has no spec
        check_env(maze(render_mode="rgb_array"))


def test_get_state_set_state_round_trip_is_exact():
    env = BlockingMaze(change_step=5)
    env.reset(seed=3)
    for action in [UP, RIGHT, RIGHT, UP]:
        env.step(action)
    saved = json.loads(json.dumps(env.get_state()))  # JSON-serialisable by construction
    actions = [UP, LEFT, UP, UP, RIGHT, DOWN]
    expected = [env.step(action) for action in actions]
    expected_draw = env.np_random.random()

    restored = BlockingMaze(change_step=5)
    restored.reset(seed=99)
    restored.set_state(saved)
    assert [restored.step(action) for action in actions] == expected
    assert restored.np_random.random() == expected_draw


def test_evaluation_sees_the_changed_layout():
    """A fresh evaluation maze takes the training maze's world state (the moved wall)."""
    from wmlab.envs.mazes import BlockingMaze
    from wmlab.eval.returns import evaluate_agent

    class RightThenUp:
        """Five moves right to column 8, then up through the gap that exists only before the change."""

        def act(self, obs, steps_taken, explore):
            steps_taken = 0 if obs["is_first"][0] else steps_taken
            action = 2 if steps_taken < 5 else 0  # 2: right, 0: up
            return np.array([action]), steps_taken + 1

    training = BlockingMaze(change_step=10)
    training.reset(seed=0)
    for _ in range(10):
        training.step(0)
    settings = dict(episodes=1, seed=0, env_kwargs={"change_step": 10, "max_episode_steps": 30})
    assert evaluate_agent(RightThenUp(), "blocking-maze", **settings)["eval/return"] == 1.0
    assert (
        evaluate_agent(RightThenUp(), "blocking-maze", world_state=training.world_state(), **settings)["eval/return"]
        == 0.0
    )
