"""The pipelines room: the multi-stage experiments live in wmlab/pipelines/, agents/ keeps agents."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import wmlab
from wmlab.core.registry import ALGORITHMS
from wmlab.envs.adapter import make_env
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec, build_agent

AGENTS = Path(wmlab.__file__).parent / "agents"


def test_agent_folders_hold_no_pipelines():
    for folder in AGENTS.iterdir():
        if folder.is_dir():
            names = {path.name for path in folder.glob("*.py")}
            assert not names & {"pipeline.py", "landscape.py", "pixels_comparison.py", "rollouts.py"}, folder


def test_jepa_planner_is_built_by_the_loop_constructor_contract():
    entry = ALGORITHMS.get("jepa-planner")
    assert "wmlab pipeline jepa" in entry.description
    env = make_env("two-rooms")
    spec = RunSpec(algorithm="jepa-planner", env="two-rooms", agent=entry.load_config()(), train=TrainConfig())
    agent = build_agent(spec, env.observation_space, env.action_space, seed=0)
    observation, _ = env.reset(seed=0)
    agent.set_goal(env.unwrapped.goal_observation())
    frame = observation["image"] if isinstance(observation, dict) else observation
    action, _ = agent.act({"image": frame[None], "is_first": np.array([True])}, None, explore=False)
    assert np.asarray(action).shape[-1] == env.action_space.shape[0]
    env.close()
