"""Goal-reaching by model-predictive control in a JEPA world model's representation space.

Two planning objectives over the predicted embeddings z_1..z_L of a candidate action sequence:

- distance (EB-JEPA, PLDM): minimise sum_l ||z_l - z_goal||^2;
- value (value-guided JEPA, Destrade et al., arXiv:2601.00844): maximise a goal-conditioned value
  V(z, g) = -||phi(z) - phi(g)|| learned offline, so that a distance in a learned space
  approximates the negative value of the -1-per-step reaching problem. The value is trained with
  IQL's expectile loss (Kostrikov et al., arXiv:2110.06169, Sec. 4.1) on a TD target, the
  action-free form of HIQL (Park et al., arXiv:2307.11949), on hindsight-relabelled goals.

Deviation: the paper shapes the JEPA encoder itself with the value loss; here the value is a
separate head on the frozen embeddings (phi), which leaves the world model untouched.

Shape legend: B batch, N candidates, L horizon, A action dim, D embedding, P projection.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from wmlab.agents.jepa_planner.config import JEPAPlannerConfig, ValueConfig
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.jepa import JEPAWorldModel, goal_distance_returns
from wmlab.nn.mlp import MLP
from wmlab.planners.mppi import MPPI


def expectile_loss(difference: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |tau - 1(u < 0)| u^2 for u = target - prediction (IQL's L_2^tau, arXiv:2110.06169, Sec. 4.1)."""
    weight = torch.where(difference < 0, 1.0 - expectile, expectile)
    return (weight * difference.pow(2)).mean()


class GoalValue(nn.Module):
    """V(z, g) = -||phi(z) - phi(g)||_2: zero at the goal, symmetric, a distance in phi's space."""

    def __init__(self, embedding_size: int, config: ValueConfig):
        super().__init__()
        self.config = config
        self.phi = MLP(embedding_size, config.projection_size, config.hidden_size, 2, layer_norm=True)

    def forward(self, embedding: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:  # (..., D), (..., D) -> (...)
        difference = self.phi(embedding) - self.phi(goal)
        # The epsilon keeps the gradient finite where the two coincide.
        return -torch.sqrt(difference.pow(2).sum(-1) + 1e-6)


class ValueLearner:
    """Expectile TD on hindsight goals over per-episode embeddings [(length_i, D)]."""

    def __init__(self, value: GoalValue, config: ValueConfig, seed: int = 0):
        self.value, self.config = value, config
        self.target = copy.deepcopy(value).requires_grad_(False)
        self.optimizer = torch.optim.Adam(value.parameters(), lr=config.learning_rate)
        self.generator = np.random.default_rng(seed)

    def sample(self, episodes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, z_{t+1}, goal z_j, goal reached at t+1) for B random (t, j > t) pairs."""
        rng, config = self.generator, self.config
        lengths = np.array([len(episode) for episode in episodes])
        usable = np.flatnonzero(lengths >= 2)
        chosen = rng.choice(usable, size=config.batch_size, p=(lengths[usable] - 1) / (lengths[usable] - 1).sum())
        states, following, goals, reached = [], [], [], []
        for index in chosen:
            length = lengths[index]
            t = int(rng.integers(0, length - 1))
            if rng.random() < config.geometric_goal_fraction:
                j = min(t + int(rng.geometric(1.0 - config.discount)), length - 1)
            else:
                j = int(rng.integers(t + 1, length))
            episode = episodes[index]
            states.append(episode[t])
            following.append(episode[t + 1])
            goals.append(episode[j])
            reached.append(j == t + 1)
        return torch.stack(states), torch.stack(following), torch.stack(goals), torch.tensor(reached)

    def update(self, episodes: list[torch.Tensor]) -> dict[str, float]:
        config = self.config
        z, z_next, goal, reached = self.sample(episodes)
        with torch.no_grad():
            # Reward -1 per step until the goal; arriving at the goal ends the problem.
            target = -1.0 + config.discount * (~reached).float() * self.target(z_next, goal)
        prediction = self.value(z, goal)
        loss = expectile_loss(target - prediction, config.expectile)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for target_parameter, parameter in zip(self.target.parameters(), self.value.parameters()):
                target_parameter.lerp_(parameter, config.target_rate)
        return {"loss/value": float(loss.detach()), "value/mean": float(prediction.mean().detach())}


def value_returns(model: JEPAWorldModel, value: GoalValue, goal: torch.Tensor, terminal_only: bool = False):
    """rollout_fn(z (1, D), actions (N, L, A)) -> (N,): the mean over the horizon (or the last step)
    of V(z_l, goal) along the predicted embeddings."""

    def rollout_fn(state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        start = state.reshape(1, -1).expand(actions.shape[0], -1)
        predicted = model.rollout(start, actions.to(start.dtype))  # (N, L, D)
        values = value(predicted, goal.reshape(1, 1, -1).expand_as(predicted))  # (N, L)
        return values[:, -1] if terminal_only else values.mean(1)

    return rollout_fn


class JEPAPlannerAgent:
    """Agent protocol: given a goal observation (`set_goal`), plans with MPPI in the model's
    representation space and replans every `replan_every` steps. One environment (B = 1)."""

    learns_from: Literal["transitions", "replay"] = "replay"

    def __init__(
        self,
        config: JEPAPlannerConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        model: JEPAWorldModel | None = None,
        value: GoalValue | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        self.config = config
        self.action_space = action_space
        self.device = torch.device(device)
        self.model = (model or JEPAWorldModel(config.model, observation_space, action_space)).to(self.device)
        self.value = (value or GoalValue(config.model.embedding_size, config.value)).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.planner = MPPI(config.planner, seed=seed, device=self.device)
        self.goal_embedding: torch.Tensor | None = None

    def set_goal(self, goal_observation: np.ndarray) -> None:
        """The observation to reach, e.g. TwoRooms.goal_observation(); call at every episode start."""
        with torch.no_grad():
            self.goal_embedding = self.model.encode(np.asarray(goal_observation)[None])[0]
        self.planner.reset()

    def rollout_fn(self):
        if self.goal_embedding is None:
            raise RuntimeError("call set_goal(goal_observation) before act(): the planner needs a goal")
        if self.config.objective == "value":
            return value_returns(self.model, self.value, self.goal_embedding, terminal_only=self.config.value_at_end)
        return goal_distance_returns(self.model, self.goal_embedding, terminal_only=self.config.distance_at_end)

    @torch.no_grad()
    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        """obs: dict of (1, ...) arrays; state: {"plan": (L, A), "step": int} or None."""
        first = state is None or bool(np.asarray(obs.get("is_first", [False])).reshape(-1)[0])
        if first:
            self.planner.reset()
            state = {"plan": None, "step": 0}
        if state["plan"] is None or state["step"] % self.config.replan_every == 0:
            embedding = self.model.encode(np.asarray(obs[self.model.observation_key]))  # (1, D)
            state["plan"] = self.planner.plan(self.rollout_fn(), embedding, self.action_space, explore=explore)
        action = state["plan"][state["step"] % self.config.replan_every].cpu().numpy().astype(np.float32)
        state["step"] += 1
        return action[None], state

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}

    def update(self, batch: Batch) -> dict[str, float]:
        """One world-model gradient step (and the EMA target's update when configured)."""
        self.model.train()
        loss, metrics = self.model.loss(batch.to_torch(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad/model_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip))
        self.optimizer.step()
        self.model.update_target()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "value": self.value.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.value.load_state_dict(state["value"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
