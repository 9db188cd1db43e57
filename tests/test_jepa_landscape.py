"""The objective-landscape diagnostics of JEPA planning on real two-rooms frames."""

import json

import numpy as np
import pytest
import torch

from wmlab.envs.two_rooms import TwoRooms
from wmlab.pipelines.jepa import landscape as L
from wmlab.pipelines.jepa.pipeline import positions_from_frame

LAYOUT = L.Layout(door_y=0.3, goal=(0.8, 0.8))  # goal in the right room, door low


def read_agent_scores(frames, goal_frame):
    """Minus the true path length, from the agent position read off each frame."""
    from wmlab.envs.two_rooms import TwoRoomsGeometry, path_length

    return np.array(
        [
            -path_length(tuple(positions_from_frame(frame)[:2]), LAYOUT.goal, LAYOUT.door_y, TwoRoomsGeometry())
            for frame in frames
        ]
    )


@pytest.fixture(scope="module")
def true_landscape():
    return L.landscape(TwoRooms(observation="pixels"), LAYOUT, read_agent_scores, cells=16)


def test_grid_leaves_out_the_wall_and_renders_the_agent_where_it_stands(true_landscape):
    land = true_landscape
    assert land.scores.shape == (16, 16) and land.free.sum() < 16 * 16  # the wall band is not free
    assert np.all(np.isnan(land.scores[~land.free])) and np.all(np.isfinite(land.scores[land.free]))
    # The frames show the agent at the grid cell: the scores read back agree with the path lengths.
    assert np.corrcoef(land.scores[land.free], -land.path_lengths[land.free])[0, 1] > 0.99
    assert land.at_goal.any() and not land.at_goal[:, :8].any()  # the goal region is in the right room


def test_the_true_distance_scores_perfectly(true_landscape):
    perfect = L.with_scores(true_landscape, -true_landscape.path_lengths)
    assert L.rank_correlation(perfect) == pytest.approx(1.0)
    assert L.descent_accuracy(perfect) == 1.0
    assert L.greedy_success(perfect) == 1.0


def test_a_wall_blind_distance_gets_stuck_behind_the_wall(true_landscape):
    blind = L.with_scores(true_landscape, L.straight_line_scores(true_landscape, LAYOUT))
    assert L.rank_correlation(blind) > 0.5  # it orders most cells right
    assert L.greedy_success(blind) < 0.8  # but greedy descent from the far room ends at the wall
    assert L.descent_accuracy(blind) < 1.0
    reversed_scores = L.with_scores(true_landscape, true_landscape.path_lengths)
    assert L.rank_correlation(reversed_scores) == pytest.approx(-1.0)
    assert L.greedy_success(reversed_scores) == 0.0


def test_landscape_command_scores_a_trained_run(tmp_path):
    from test_jepa import quick_arguments

    from wmlab.pipelines.jepa.pipeline import run_pipeline

    run_pipeline(quick_arguments(tmp_path, ("value",)))
    assert L.landscape_command(["--out", str(tmp_path), "--layouts", "2", "--cells", "8"]) == 0
    written = json.loads((tmp_path / "landscape-seed0-checkpoint.json").read_text())
    summary = written["summary"]
    assert set(written["layout_probe_r2"]) == set(L.LAYOUT_FACTORS)
    assert set(summary) == {"distance", "value"}
    assert all(
        -1.0 <= metrics["rank_correlation"] <= 1.0 and 0.0 <= metrics["greedy_success"] <= 1.0
        for metrics in summary.values()
    )
    assert (tmp_path / "landscape-seed0-checkpoint.png").stat().st_size > 0
    assert (
        written["wall_probe"]["blocked_pushes"] > 0 and 0.0 <= written["wall_probe"]["blocked_predicted_stopped"] <= 1.0
    )


def test_landscape_command_refuses_a_directory_without_a_run(tmp_path):
    with pytest.raises(SystemExit, match="results.json"):
        L.landscape_command(["--out", str(tmp_path)])


def test_layout_probe_reads_what_is_encoded_and_nothing_else():
    rng = np.random.default_rng(0)
    factors = rng.uniform(size=(800, 5))
    mixing = rng.normal(size=(5, 12))
    encoded = factors @ mixing + 0.3  # every factor linearly recoverable
    probe = L.layout_probe(encoded, factors)
    assert set(probe) == set(L.LAYOUT_FACTORS) and min(probe.values()) > 0.999
    without_door = factors[:, :4] @ mixing[:4] + 0.01 * rng.normal(size=(800, 12))  # the door left out
    probe = L.layout_probe(without_door, factors)
    assert probe["door_y"] < 0.05 and probe["agent_x"] > 0.99


def read_positions(frames):
    return torch.tensor(np.stack([positions_from_frame(frame) for frame in frames]), dtype=torch.float64)


def physics_rollout(start, actions):
    """The true dynamics on read-off states (agent x, y, goal x, y, door y): the environment steps."""
    env = TwoRooms(observation="state")
    env.reset(seed=0)
    snapshot, predicted = env.get_state(), []
    for state, sequence in zip(start.numpy(), actions.numpy()):
        env.set_state(
            {
                **snapshot,
                "agent": [float(state[0]), float(state[1])],
                "goal": [float(state[2]), float(state[3])],
                "door_y": float(state[4]),
            }
        )
        predicted.append([env.step(action.astype(np.float32))[0] for action in sequence])
    return torch.tensor(np.array(predicted), dtype=torch.float64)


def wall_blind_rollout(start, actions):
    """Free motion: the agent moves by the whole action every step, walls or not."""
    moves = torch.zeros(*actions.shape[:2], start.shape[-1], dtype=start.dtype)
    moves[..., :2] = actions.cumsum(1) * TwoRooms().geometry.max_step
    return start[:, None] + moves


def test_wall_probe_tells_a_wall_aware_predictor_from_a_wall_blind_one():
    env = TwoRooms(observation="pixels")
    layouts = [L.Layout(door_y=0.3, goal=(0.8, 0.8)), L.Layout(door_y=0.7, goal=(0.7, 0.2))]
    aware = L.wall_probe(read_positions, physics_rollout, env, layouts)
    blind = L.wall_probe(read_positions, wall_blind_rollout, env, layouts)
    assert aware["blocked_pushes"] == blind["blocked_pushes"] > 10 and aware["open_pushes"] > 0
    assert aware["blocked_predicted_stopped"] == 1.0 and aware["blocked_error"] < 0.1
    assert blind["blocked_predicted_stopped"] == 0.0 and blind["blocked_error"] > 0.3
    assert aware["open_error"] < 0.1 and blind["open_error"] < 0.1  # through the door both are right
    bands = aware["stopped_by_door_distance"]
    assert sum(row["pushes"] for row in bands.values()) == aware["blocked_pushes"] and len(bands) >= 2
    assert all(row["stopped"] == 1.0 for row in bands.values())
    assert all(row["stopped"] == 0.0 for row in blind["stopped_by_door_distance"].values())


def test_wall_blocked_share_counts_the_pushes_the_wall_stops():
    env = TwoRooms(observation="pixels")
    env.reset(seed=0)
    env.set_state({**env.get_state(), "agent": [0.3, 0.9], "door_y": 0.3})  # far above the door
    frames, actions = [env.frame_at((0.3, 0.9))], [np.zeros(2, np.float32)]
    for action in [(1.0, 0.0)] * 6 + [(0.0, -1.0)] * 2:  # 3 pushes reach the wall, 3 more are blocked; then down
        frame, *_ = env.step(np.array(action, np.float32))
        frames.append(frame)
        actions.append(np.array(action, np.float32))
    share = L.wall_blocked_share([{"image": np.stack(frames), "action": np.stack(actions)}], env.geometry)
    assert share["transitions"] == 8
    assert 2 <= share["blocked"] <= 4  # the pushes after contact (the one that reaches the wall may move part way)
