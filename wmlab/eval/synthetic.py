"""Small world models whose answers are known, for testing the measurements of
`wmlab.eval.world_model_metrics` (and for trying them out).

`LinearGaussianModel`: x' = A x + B a + sigma * noise on vector observations, with the WorldModel
protocol; its state is the observation itself (B, D), so it decodes exactly. With sigma = 0 it is
deterministic; with B = 0 it ignores its actions. `sample_batch` draws real data from any such
model (a model evaluated on data from itself is perfect; one evaluated on data from another has a
known mismatch).

Shape legend: B batch, T time, L horizon, A action dim, D features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wmlab.core.protocols import ActionsOrPolicy
from wmlab.core.seeding import seeded
from wmlab.core.types import Batch, Trajectory


class LinearGaussianModel:
    """x_{t+1} = x_t A^T + a_{t+1} B^T + noise_std * N(0, I); reward = first feature of x_{t+1}.

    matrix (D, D); action_matrix (D, A) or None for a model that ignores its actions (A is then
    `action_size`). Noise comes from torch's global generator, so seeding it reproduces a rollout.
    """

    can_decode = True

    def __init__(
        self,
        matrix: Any,
        action_matrix: Any | None = None,
        noise_std: float = 0.0,
        action_size: int = 1,
        declare_deterministic: bool = False,
    ):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        D = self.matrix.shape[0]
        if action_matrix is None:
            action_matrix = torch.zeros(D, action_size, dtype=torch.float64)
        self.action_matrix = torch.as_tensor(action_matrix, dtype=torch.float64)
        self.action_size = self.action_matrix.shape[1]
        self.noise_std = float(noise_std)
        if declare_deterministic:
            # The attribute the calibration measurement reads before sampling anything.
            self.deterministic = True

    @property
    def size(self) -> int:
        return self.matrix.shape[0]

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # (B, D), (B, A) -> (B, D)
        following = state @ self.matrix.T + action @ self.action_matrix.T
        if self.noise_std > 0:
            following = following + self.noise_std * torch.randn(following.shape, dtype=following.dtype)
        return following

    def initial(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.size, dtype=torch.float64)

    def observe(self, obs: dict, action: Any, is_first: Any, state: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.as_tensor(np.asarray(obs["vector"]), dtype=torch.float64)
        return states, states[:, -1]

    def imagine(
        self, state: torch.Tensor, actions_or_policy: ActionsOrPolicy, horizon: int | None = None
    ) -> Trajectory:
        policy = actions_or_policy if callable(actions_or_policy) else None
        actions = None if policy else torch.as_tensor(np.asarray(actions_or_policy), dtype=torch.float64)
        horizon = actions.shape[1] if horizon is None else horizon
        states, taken = [], []
        for index in range(horizon):
            action = actions[:, index] if policy is None else torch.as_tensor(policy(state), dtype=torch.float64)
            state = self.step(state, action)
            states.append(state)
            taken.append(action)
        stacked = torch.stack(states, 1)
        return Trajectory(
            states=stacked,
            actions=torch.stack(taken, 1),
            rewards=stacked[..., 0],
            continues=torch.ones(stacked.shape[:2], dtype=torch.float64),
            observations={"vector": stacked},
        )

    def decode(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"vector": state}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        states = torch.as_tensor(np.asarray(batch.obs["vector"]), dtype=torch.float64)
        actions = torch.as_tensor(np.asarray(batch.action), dtype=torch.float64)
        predicted = states[:, :-1] @ self.matrix.T + actions[:, 1:] @ self.action_matrix.T
        error = (predicted - states[:, 1:]).pow(2).mean()
        return error, {"loss/next_state": float(error)}


def rotation(angle: float, scale: float = 1.0) -> np.ndarray:
    """scale times a 2-D rotation: every vector is stretched by exactly `scale`, so the map's
    Lipschitz constant is `scale` and every finite difference shows it."""
    cos, sin = np.cos(angle), np.sin(angle)
    return scale * np.array([[cos, -sin], [sin, cos]])


def sample_batch(
    model: LinearGaussianModel, batch_size: int, length: int, seed: int = 0, action_std: float = 1.0
) -> Batch:
    """B real windows of T steps drawn from `model` itself: x_0 ~ N(0, I), actions ~ N(0, action_std^2),
    in wmlab's time convention (step t holds the action that led to x_t; zeros at t = 0)."""
    generator = np.random.default_rng(seed)
    start = torch.as_tensor(generator.normal(size=(batch_size, model.size)))
    actions = generator.normal(scale=action_std, size=(batch_size, length, model.action_size))
    actions[:, 0] = 0.0
    with seeded(seed):
        trajectory = model.imagine(start, actions[:, 1:], length - 1)
    states = torch.cat([start[:, None], trajectory.states], 1).numpy()
    rewards = np.concatenate([np.zeros((batch_size, 1)), trajectory.rewards.numpy()], 1).astype(np.float32)
    is_first = np.zeros((batch_size, length), dtype=bool)
    is_first[:, 0] = True
    return Batch(
        obs={"vector": states},
        action=actions,
        reward=rewards,
        is_first=is_first,
        is_last=np.zeros((batch_size, length), dtype=bool),
        is_terminal=np.zeros((batch_size, length), dtype=bool),
    )
