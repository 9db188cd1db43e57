"""Model-based MPC (Nagabandi et al. 2018, arXiv:1708.02596): learn a feed-forward dynamics model
from replay, act by random shooting through it, replan at every step.

Shape legend: B environments (or batch), T time, N candidates, L horizon, A action dim, D features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.mpc.config import MPCConfig
from wmlab.core.distributed import average_gradients
from wmlab.core.errors import IncompatibleSpaceError
from wmlab.core.shapes import check_shape
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.mlp import MLPWorldModel
from wmlab.planners.shooting import RandomShooting, check_action_space


def discounted_return(rewards: torch.Tensor, continues: torch.Tensor, discount: float) -> torch.Tensor:
    """sum_l discount^l * prod_{k<l} c_k * r_l for rewards, continues (N, L) -> (N,).

    r_l is received on arriving at state l, so it counts in full when every state before it was
    non-terminal; the first reward is always counted, and c_l, the probability that state l is not
    terminal, scales everything after it.
    """
    alive = torch.cumprod(torch.cat([torch.ones_like(continues[:, :1]), continues[:, :-1]], 1), 1)
    discounts = discount ** torch.arange(rewards.shape[1], device=rewards.device, dtype=rewards.dtype)
    return (rewards * alive * discounts).sum(1)


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if not isinstance(observation_space, spaces.Dict) or "vector" not in observation_space.spaces:
        keys = sorted(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else observation_space
        raise IncompatibleSpaceError(
            f"mpc plans with a feed-forward model of 'vector' observations, and this environment gives {keys}. "
            "Pixel observations need a world model with an image encoder: PlaNet, Dreamer (V1-V3), IRIS or "
            "TD-MPC2 from pixels; `wmlab list` shows which are available."
        )
    vector = observation_space["vector"]
    if not isinstance(vector, spaces.Box) or len(vector.shape) != 1:
        raise IncompatibleSpaceError(f"mpc needs the 'vector' observation to be a 1-D Box, got {vector}")
    check_action_space(action_space)
    if isinstance(action_space, spaces.Discrete) and int(action_space.start) != 0:
        raise IncompatibleSpaceError(f"mpc takes Discrete actions that start at 0, got {action_space}")


class MPCAgent:
    """Agent: random actions for the first `random_steps` steps, then receding-horizon random
    shooting through the learned model (the first action of the best sequence, replanned each step).
    """

    learns_from = "replay"

    def __init__(
        self,
        config: MPCConfig,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        seed: int,
        device: str = "cpu",
    ):
        check_spaces(observation_space, action_space)
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = torch.device(device)
        # One CPU generator draws every random number (initial weights aside), so that its state
        # alone makes acting resumable, whatever the device.
        self.generator = torch.Generator().manual_seed(seed)
        # Seed the initial weights without disturbing the caller's global random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MLPWorldModel(config.model, observation_space, action_space)
        self.world_model = model.to(self.device)
        self.optimizer = torch.optim.Adam(self.world_model.parameters(), lr=config.learning_rate)
        self.planner = RandomShooting(config.planner, generator=self.generator, device=self.device)
        #: Environment steps taken while exploring (summed over environments): the clock of `random_steps`.
        self.steps = 0

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"world_model": self.world_model}

    # --- acting ------------------------------------------------------------------------------

    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, None]:
        """obs {"vector": (B, D), ...} -> (actions (B, A) float for a Box, (B,) int64 for a
        Discrete space; None, as a feed-forward model keeps no recurrent state)."""
        vector = torch.as_tensor(np.asarray(obs["vector"]), dtype=torch.float32)
        sizes = check_shape("obs['vector']", vector, ("B", self.world_model.observation_size))
        B = sizes["B"]
        if explore and self.steps < self.config.random_steps:
            actions = self.random_actions(B)
        else:
            vector = vector.to(self.device)
            actions = torch.stack([self.planner.plan(self.rollout, row, self.action_space)[0].cpu() for row in vector])
            if explore:
                actions = self.add_noise(actions)
        if explore:
            self.steps += B
        return actions.numpy().astype(self.action_space.dtype, copy=False), None

    @torch.no_grad()
    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The rollout function handed to the planner: state (D,), actions (N, L, A) or (N, L)
        -> predicted discounted returns (N,)."""
        starts = state.expand(actions.shape[0], -1)
        trajectory = self.world_model.imagine(starts, actions)
        return discounted_return(trajectory.rewards, trajectory.continues, self.config.discount)

    def random_actions(self, count: int) -> torch.Tensor:  # -> (count, A) or (count,)
        return self.planner.sample(self.action_space, count, length=1)[:, 0].cpu()

    def add_noise(self, actions: torch.Tensor) -> torch.Tensor:
        noise = self.config.exploration_noise
        if noise <= 0:
            return actions
        if isinstance(self.action_space, spaces.Discrete):
            replace = torch.rand(actions.shape, generator=self.generator) < noise
            return torch.where(replace, self.random_actions(actions.shape[0]), actions)
        low = torch.as_tensor(self.action_space.low, dtype=actions.dtype)
        high = torch.as_tensor(self.action_space.high, dtype=actions.dtype)
        jitter = torch.randn(actions.shape, generator=self.generator, dtype=actions.dtype) * noise * (high - low)
        return torch.clamp(actions + jitter, low, high)

    # --- learning ----------------------------------------------------------------------------

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}  # learns from replay windows in `update`

    def update(self, batch: Batch) -> dict[str, float]:
        """One Adam step on the world-model loss for B windows of T steps."""
        self.world_model.train()
        loss, metrics = self.world_model.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.world_model)  # a no-op in one process; the mean over ranks under torchrun
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), max_norm)
        self.optimizer.step()
        metrics["wm/grad_norm"] = float(grad_norm)
        return metrics

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights and statistics, optimiser moments, the step clock and the random state:
        everything that a resumed run needs to continue exactly as this one would have."""
        return {
            "model": dict(self.world_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"].cpu())
