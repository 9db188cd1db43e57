"""benchmarks/unisim_oracle.py's oracle simulator: two-rooms reset to the situation read from a
frame, stepped by instructions, paying the signs of the true rewards."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wmlab.envs.two_rooms import make_two_rooms_discrete
from wmlab.pipelines.unisim import INSTRUCTION_MOVES, instruction_moves

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "unisim_oracle.py"


@pytest.fixture(scope="module")
def oracle_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield runpy.run_path(str(SCRIPT))
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_the_oracle_plays_instructions_from_the_situation_a_frame_shows(oracle_module):
    env = make_two_rooms_discrete(reward="dense")
    situations = [
        {"agent": (0.2, 0.3), "goal": (0.3, 0.8), "door_y": 0.5},  # goal up, same room
        {"agent": (0.8, 0.5), "goal": (0.2, 0.5), "door_y": 0.5},  # goal left, through the door
        {"agent": (0.5 - 0.06, 0.2), "goal": (0.8, 0.2), "door_y": 0.8},  # against the wall, off the door
    ]
    frames = np.stack([env.reset(seed=0, options=situation)[0] for situation in situations])  # (3, H, W, C)
    instructions = tuple(INSTRUCTION_MOVES)
    moves = instruction_moves(instructions, list(instructions), env.get_action_meanings(), "two-rooms-discrete")
    oracle = oracle_module["TwoRoomsOracle"](moves, {"reward": "dense"}, seed=0)
    _, state = oracle.observe({"image": frames[:, None]}, None, None, None)
    assert oracle.read == 3 and oracle.unread == 0
    for copy, situation in zip(state["envs"], situations):  # within a pixel of the true places
        assert np.allclose(copy.unwrapped._agent, situation["agent"], atol=1.5 / 64)
    redrawn = oracle.decode(state)["image"]  # the copies' frames: at most the agent's edge a pixel off
    assert (redrawn - torch.as_tensor(frames).float() / 255).abs().mean() < 0.01
    plan = [["move up", "move left", "move right"], ["stay still", "move left", "move right"]]
    chosen = iter(plan)
    trajectory = oracle.imagine(
        state, lambda current: torch.tensor([instructions.index(text) for text in next(chosen)]), horizon=2
    )
    # the signs of the rewards the true environment pays for the same moves from the same places
    expected = []
    for situation, texts in zip(situations, zip(*plan)):
        env.reset(seed=0, options=situation)
        expected.append([float(np.sign(env.step(moves[instructions.index(text)])[1])) for text in texts])
    assert trajectory.rewards.tolist() == expected
    assert expected[0][0] == 1.0 and expected[1][0] == 1.0 and expected[0][1] == 0.0  # toward the goal; staying
    assert trajectory.continues.tolist() == [[1.0, 1.0]] * 3
    assert trajectory.observations["image"].shape == (3, 2, *frames.shape[1:])


def test_frame_rewards_replace_the_simulators_rewards_by_the_signs_its_frames_show(oracle_module):
    from wmlab.core.types import Trajectory

    env = make_two_rooms_discrete(reward="dense")
    env.reset(seed=0, options={"door_y": 0.5, "agent": (0.2, 0.2), "goal": (0.2, 0.8)})
    path = [(0.2, 0.2), (0.2, 0.3), (0.2, 0.3), (0.2, 0.2)]  # toward the goal, still, away
    frames = torch.as_tensor(np.stack([env.unwrapped.frame_at(point) for point in path])).float()[None] / 255

    class Scripted:
        def decode(self, state):
            return {"image": frames[:, 0]}

        def imagine(self, state, policy, horizon, **options):
            rewards = torch.full((1, horizon), 5.0)  # what a reward model might say; replaced
            return Trajectory(None, torch.zeros(1, horizon), rewards, torch.ones(1, horizon), {"image": frames[:, 1:]})

    trajectory = oracle_module["FrameRewards"](Scripted()).imagine(None, None, 3)
    assert trajectory.rewards.tolist() == [[1.0, 0.0, -1.0]]
    assert trajectory.continues.tolist() == [[1.0, 1.0, 1.0]]
