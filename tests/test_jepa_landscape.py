"""The objective-landscape diagnostics of JEPA planning on real two-rooms frames."""

import json

import numpy as np
import pytest

from wmlab.agents.jepa_planner import landscape as L
from wmlab.agents.jepa_planner.pipeline import positions_from_frame
from wmlab.envs.two_rooms import TwoRooms

LAYOUT = L.Layout(door_y=0.3, goal=(0.8, 0.8))  # goal in the right room, door low


def read_agent_scores(frames, goal_frame):
    """Minus the true path length, from the agent position read off each frame."""
    from wmlab.envs.two_rooms import TwoRoomsGeometry, path_length

    return np.array([-path_length(tuple(positions_from_frame(frame)[:2]), LAYOUT.goal, LAYOUT.door_y, TwoRoomsGeometry())
                     for frame in frames])


@pytest.fixture(scope="module")
def true_landscape():
    return L.landscape(TwoRooms(observation="pixels"), LAYOUT, read_agent_scores, cells=16)


def test_grid_leaves_out_the_wall_and_renders_the_agent_where_it_stands(true_landscape):
    land = true_landscape
    assert land.scores.shape == (16, 16) and land.free.sum() < 16 * 16  # the wall band is not free
    assert np.all(np.isnan(land.scores[~land.free])) and np.all(np.isfinite(land.scores[land.free]))
    # The frames show the agent at the grid cell: the scores read back agree with the path lengths.
    assert np.corrcoef(land.scores[land.free], -land.path_lengths[land.free])[0, 1] > 0.99
    assert land.at_goal.any() and not land.at_goal[:, : 8].any()  # the goal region is in the right room


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
    from wmlab.agents.jepa_planner.pipeline import PipelineArguments, run_pipeline

    run_pipeline(PipelineArguments(out=tmp_path, quick=True, objectives=("value",), progress=False))
    assert L.landscape_command(["--out", str(tmp_path), "--layouts", "2", "--cells", "8"]) == 0
    written = json.loads((tmp_path / "landscape.json").read_text())
    summary = written["summary"]
    assert set(written["layout_probe_r2"]) == set(L.LAYOUT_FACTORS)
    assert set(summary) == {"distance", "value"}
    assert all(-1.0 <= metrics["rank_correlation"] <= 1.0 and 0.0 <= metrics["greedy_success"] <= 1.0
               for metrics in summary.values())
    assert (tmp_path / "landscape.png").stat().st_size > 0


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
