"""benchmarks/diffusion_generation.py's readings of two-rooms frames: the dense reward and the moves
that pass through the wall, checked on frames the environment itself draws."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from wmlab.envs.two_rooms import TwoRooms

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "diffusion_generation.py"


@pytest.fixture(scope="module")
def bench():
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def frames_along(path: list[tuple[float, float]], door_y: float = 0.5) -> np.ndarray:
    """(1, L, 64, 64, 3) uint8: the agent drawn at each point of `path`, goal and door fixed."""
    env = TwoRooms(reward="dense")
    env.reset(seed=0, options={"door_y": door_y, "agent": (0.2, 0.2), "goal": (0.8, 0.8)})
    return np.stack([env.frame_at(point) for point in path])[None]


def test_moves_through_the_wall_are_told_from_moves_through_the_door(bench):
    door = [(0.45, 0.5), (0.55, 0.52)]  # crosses the middle at the door's height
    wall = [(0.45, 0.2), (0.55, 0.2)]  # crosses at 0.2, far below the door (0.4 to 0.6)
    same_room = [(0.2, 0.2), (0.3, 0.2)]
    crossed, read = bench.wall_crossings(
        np.concatenate([frames_along(door), frames_along(wall), frames_along(same_room)])
    )
    assert read.all()
    assert crossed[:, 0].tolist() == [False, True, False]
    # the door's position is read from the frame: the same wall move is a door move where the door is
    crossed, _ = bench.wall_crossings(frames_along(wall, door_y=0.2))
    assert not crossed.any()
    assert bench.crossing_share(frames_along(wall + door[::-1])) == pytest.approx(1 / 3)  # 3 moves, 1 through the wall


def test_the_reward_read_from_frames_is_the_decrease_of_the_path_length(bench):
    toward = frames_along([(0.3, 0.5), (0.35, 0.5), (0.4, 0.5)])
    away = frames_along([(0.4, 0.5), (0.35, 0.5)])
    assert (bench.path_decreases(toward) > 0.03).all()
    assert (bench.path_decreases(away) < -0.03).all()
