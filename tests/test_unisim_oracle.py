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
