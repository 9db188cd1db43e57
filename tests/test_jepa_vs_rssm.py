"""The representation-versus-pixels comparison: the RSSM's pixel-space goal planner and the
`wmlab pipeline jepa-vs-rssm` pipeline end to end at tiny sizes."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from wmlab.agents.jepa_planner.agent import JEPAPlannerAgent
from wmlab.agents.jepa_planner.config import JEPAPlannerConfig
from wmlab.models.jepa import JEPAConfig, goal_distance_returns
from wmlab.models.rssm import SIZES, RSSMConfig
from wmlab.pipelines.jepa.pixels_comparison import (
    ComparisonArguments,
    RSSMGoalAgent,
    RSSMGoalConfig,
    markdown_table,
    run_comparison,
)
from wmlab.planners.mppi import MPPI, MPPIConfig

ACTIONS = spaces.Box(-1.0, 1.0, (2,), np.float32)
PIXELS = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
TINY_PLANNER = MPPIConfig(horizon=3, iterations=2, samples=8, elites=2, policy_trajectories=0)


def tiny_rssm_agent(**overrides) -> RSSMGoalAgent:
    return RSSMGoalAgent(
        RSSMGoalConfig(model=RSSMConfig(size=SIZES["tiny"]), planner=TINY_PLANNER, replan_every=2, **overrides),
        PIXELS,
        ACTIONS,
    )


class BlobWorld:
    """A stand-in for the RSSM whose dynamics are known: the state is a 2-D position moved by 0.1
    per unit of action, decoded as a Gaussian blob on a 16 x 16 frame."""

    grid = torch.stack(
        torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij"), -1
    )  # (16, 16, 2)

    def imagine(self, starts, actions):
        return SimpleNamespace(states={"position": starts["position"][:, None] + 0.1 * actions.cumsum(1)})

    def decode(self, states):
        position = states["position"][..., None, None, :]  # (N, L, 1, 1, 2)
        blob = torch.exp(-((self.grid - position) ** 2).sum(-1) / 0.3)
        return {"image": blob[..., None]}


def test_pixel_objective_is_minus_the_mse_to_the_goal_image_at_the_end_or_summed():
    agent = tiny_rssm_agent()
    agent.set_goal(np.zeros((64, 64, 3), np.uint8))
    agent.model.decode = lambda states: {"image": torch.full((*states["deter"].shape[:2], 64, 64, 3), 0.5)}
    state = agent.model.initial(1)
    actions = torch.zeros(4, 3, 2)
    assert agent.rollout(state, actions).tolist() == pytest.approx([-0.25] * 4)  # one frame, (0.5 - 0)^2
    agent.config = replace(agent.config, terminal_only=False)
    assert agent.rollout(state, actions).tolist() == pytest.approx([-0.75] * 4)  # three frames


def test_pixel_space_planning_reaches_the_goal_on_a_known_model():
    agent = tiny_rssm_agent()
    agent.model = BlobWorld()
    goal = torch.tensor([0.6, -0.4])
    agent.goal_image = agent.model.decode({"position": goal[None, None]})["image"][0, 0]
    planner = MPPI(
        MPPIConfig(horizon=4, iterations=6, samples=256, elites=16, policy_trajectories=0, temperature=5.0), seed=0
    )
    position = torch.zeros(2)
    for _ in range(20):
        action = planner.plan(agent.rollout, {"position": position[None]}, ACTIONS)[0]
        position = position + 0.1 * action
    assert torch.linalg.norm(position - goal) < 0.1


def test_rssm_goal_agent_filters_every_step_and_replans_every_k():
    agent = tiny_rssm_agent()
    with pytest.raises(RuntimeError, match="set_goal"):
        agent.act({"image": np.zeros((1, 64, 64, 3), np.uint8), "is_first": np.array([True])}, None, explore=False)
    agent.set_goal(np.zeros((64, 64, 3), np.uint8))
    frames = np.random.default_rng(0).integers(0, 256, (3, 1, 64, 64, 3), dtype=np.uint8)
    action, state = agent.act({"image": frames[0], "is_first": np.array([True])}, None, explore=False)
    plan = state["plan"]
    assert action.shape == (1, 2) and np.all(np.abs(action) <= 1)
    _, following = agent.act({"image": frames[1], "is_first": np.array([False])}, state, explore=False)
    assert following["plan"] is plan  # the second of replan_every = 2 actions comes from the same plan
    assert not torch.equal(following["deter"], state["deter"])  # but the new frame was filtered
    _, third = agent.act({"image": frames[2], "is_first": np.array([False])}, following, explore=False)
    assert third["plan"] is not plan and third["step"] == 3


def test_jepa_distance_at_end_scores_the_last_predicted_embedding():
    agent = JEPAPlannerAgent(
        JEPAPlannerConfig(
            model=JEPAConfig(embedding_size=8, encoder_depth=4, hidden_size=32),
            objective="distance",
            distance_at_end=True,
        ),
        PIXELS,
        ACTIONS,
    )
    agent.set_goal(np.zeros((64, 64, 3), np.uint8))
    start, actions = torch.zeros(1, 8), torch.rand(5, 4, 2) * 2 - 1
    expected = goal_distance_returns(agent.model, agent.goal_embedding, terminal_only=True)(start, actions)
    assert torch.allclose(agent.rollout_fn()(start, actions), expected)
    assert not torch.allclose(goal_distance_returns(agent.model, agent.goal_embedding)(start, actions), expected)


def test_comparison_pipeline_trains_measures_plots_and_reloads(tmp_path):
    """`wmlab pipeline jepa-vs-rssm --quick` (numbers meaningless): both models trained on the same
    data, one error curve each over the horizon, a figure, and evaluation from the checkpoints
    reproducing the curves."""
    arguments = ComparisonArguments(out=tmp_path, quick=True)
    results = run_comparison(arguments)
    horizon = results["settings"]["horizon"]
    for name in ("jepa", "rssm"):
        assert len(results[name]["latent_normalised_mse"]) == horizon
        assert all(value is not None and value >= 0 for value in results[name]["latent_normalised_mse"])
        assert 0.0 <= results[name]["planning"]["success_rate"] <= 1.0
        assert results[name]["training"]["steps"] == 3
    assert "image/psnr" in results["rssm"]["open_loop"] and "image/psnr" not in results["jepa"]["open_loop"]
    assert (tmp_path / "latent_error.png").stat().st_size > 0
    assert json.loads((tmp_path / "comparison.json").read_text())["rssm"]["parameters"] == results["rssm"]["parameters"]
    table = markdown_table(results)
    assert table.count("\n") == 5 and "RSSM" in table
    reloaded = run_comparison(replace(arguments, reuse_checkpoints=True))
    for name in ("jepa", "rssm"):
        assert reloaded[name]["latent_normalised_mse"] == pytest.approx(
            results[name]["latent_normalised_mse"], rel=1e-5
        )
        assert reloaded[name]["training"] == results[name]["training"]


def test_rssm_goal_config_rejects_unknown_objective_and_replanning():
    with pytest.raises(ValueError, match="pixels"):
        RSSMGoalConfig(objective="distance")
    with pytest.raises(ValueError, match="replan_every"):
        RSSMGoalConfig(replan_every=99)
