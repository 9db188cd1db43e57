"""Shared data types.

Time convention (the same as DreamerV3's PyTorch ports): step t of a sequence holds
  obs_t, the action a_{t-1} that *led to* obs_t (zeros where is_first), the reward r_t received on
  arriving at obs_t (0 where is_first), and the flags is_first / is_last / is_terminal of obs_t.
So a world model filters `(obs_t, action_t)` directly, without shifting actions.

Shape legend: B batch, T time, N candidates, L horizon, A action dim, D features,
S x K stochastic latent, C, H, W image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Observation = dict[str, np.ndarray]  # one entry per key: "image" (H, W, C) uint8, "vector" (D,), "state" ()

#: Keys that every stored step carries besides the observation keys.
STEP_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")


@dataclass
class Transition:
    """One real environment step for online learners (tabular Dyna), batched over environments.

    obs, next_obs: dict of (B, ...) arrays; action (B, ...); reward, terminated, truncated (B,).
    """

    obs: Observation
    action: np.ndarray
    reward: np.ndarray
    next_obs: Observation
    terminated: np.ndarray
    truncated: np.ndarray


@dataclass
class Batch:
    """A batch of B sequences of T steps sampled from replay.

    obs: dict of (B, T, ...) arrays; action (B, T, A) or (B, T) for discrete; reward (B, T) float32;
    is_first / is_last / is_terminal (B, T) bool. Arrays may be numpy or torch tensors.
    """

    obs: dict[str, Any]
    action: Any
    reward: Any
    is_first: Any
    is_last: Any
    is_terminal: Any

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.reward.shape[:2])  # (B, T)

    def rows(self, count: int) -> "Batch":
        """The first `count` sequences (count, T, ...)."""
        B = self.shape[0]
        if not 0 < count <= B:
            raise ValueError(f"cannot take the first {count} rows of a batch of {B} sequences")
        return Batch(
            obs={key: value[:count] for key, value in self.obs.items()},
            action=self.action[:count],
            reward=self.reward[:count],
            is_first=self.is_first[:count],
            is_last=self.is_last[:count],
            is_terminal=self.is_terminal[:count],
        )

    def to_torch(self, device="cpu") -> "Batch":
        import torch

        def convert(x):
            if isinstance(x, torch.Tensor):
                return x.to(device)
            return torch.as_tensor(np.asarray(x), device=device)

        return Batch(
            obs={k: convert(v) for k, v in self.obs.items()},
            action=convert(self.action),
            reward=convert(self.reward),
            is_first=convert(self.is_first),
            is_last=convert(self.is_last),
            is_terminal=convert(self.is_terminal),
        )


@dataclass
class Trajectory:
    """An imagined rollout of L steps from B start states (time-major is never used).

    states: model-specific latent states, (B, L, ...) or a dict of such tensors;
    actions (B, L, A); rewards (B, L); continues (B, L) in [0, 1];
    observations: decoded predictions (dict of (B, L, ...)) where the family can decode, else None.
    """

    states: Any
    actions: Any
    rewards: Any
    continues: Any
    observations: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def replay_step(
    observation: dict[str, Any], action: Any, reward: float, first: bool, last: bool, terminal: bool
) -> dict[str, np.ndarray]:
    """One environment step as the replay buffer and the datasets store it: the observation's keys
    plus action, reward (float32) and the is_first / is_last / is_terminal flags."""
    step = {key: np.asarray(value) for key, value in observation.items()}
    step.update(
        action=np.asarray(action),
        reward=np.float32(reward),
        is_first=np.bool_(first),
        is_last=np.bool_(last),
        is_terminal=np.bool_(terminal),
    )
    return step
