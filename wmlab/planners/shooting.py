"""Random shooting: sample N action sequences uniformly, keep the one with the highest return.

The planner of Nagabandi et al. 2018 (arXiv:1708.02596). It sees only a rollout
function, so it plans against any world model, or an analytic toy in the tests.

Shape legend: N candidates, L horizon, A action dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.core.config import Config, ranges
from wmlab.core.errors import IncompatibleSpaceError, ShapeError
from wmlab.core.protocols import RolloutFn


@dataclass(frozen=True)
class RandomShootingConfig(Config):
    """Random-shooting search over action sequences."""

    limits = ranges(counts="horizon candidates")

    horizon: int = 10
    """Length L of each candidate action sequence."""
    candidates: int = 1000
    """Number N of sequences sampled and scored per plan."""


def check_action_space(action_space: spaces.Space) -> None:
    """Raise IncompatibleSpaceError unless random shooting can sample from `action_space`."""
    if isinstance(action_space, spaces.Discrete):
        return
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        if np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high)):
            return
        raise IncompatibleSpaceError(
            f"random shooting samples uniformly within the action bounds, and {action_space} is unbounded"
        )
    raise IncompatibleSpaceError(f"random shooting takes a 1-D Box or a Discrete action space, got {action_space}")


class RandomShooting:
    """Planner: `plan(rollout_fn, state, action_space)` -> the best of `candidates` uniform
    sequences: actions (L, A) for a Box, indices (L,) for a Discrete space.

    Candidates are drawn on the CPU from `generator` (or one seeded with `seed`), so that a plan
    does not depend on the device, and handed to `rollout_fn(state, actions)` on `device`:
    float (N, L, A) within the bounds, or int64 indices (N, L) for a Discrete space.
    """

    def __init__(
        self,
        config: RandomShootingConfig,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ):
        if generator is not None and seed is not None:
            raise ValueError("pass a generator or a seed, not both")
        if generator is None:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(seed)
        self.config = config
        self.generator = generator
        self.device = torch.device(device)

    def sample(self, action_space: spaces.Space, count: int, length: int | None = None) -> torch.Tensor:
        """`count` uniform sequences of `length` (the horizon by default): (count, L, A) float
        or (count, L) int64 indices."""
        check_action_space(action_space)
        L = self.config.horizon if length is None else length
        if isinstance(action_space, spaces.Discrete):
            indices = torch.randint(int(action_space.n), (count, L), generator=self.generator)
            return (indices + int(action_space.start)).to(self.device)
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        unit = torch.rand((count, L, low.shape[0]), generator=self.generator)
        return (low + unit * (high - low)).to(self.device)

    @torch.no_grad()
    def plan(self, rollout_fn: RolloutFn, state: Any, action_space: spaces.Space) -> torch.Tensor:
        """The highest-return candidate: (L, A) for a Box, (L,) indices for a Discrete space."""
        N = self.config.candidates
        candidates = self.sample(action_space, N)
        returns = torch.as_tensor(rollout_fn(state, candidates), device=self.device)
        if tuple(returns.shape) != (N,):
            raise ShapeError(f"rollout_fn returns: expected (N,) with N={N}, got {tuple(returns.shape)}")
        # A NaN return (a diverging model) must never win the argmax.
        returns = torch.nan_to_num(returns.float(), nan=-float("inf"))
        return candidates[returns.argmax()]
