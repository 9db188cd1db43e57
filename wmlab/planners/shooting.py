"""Random shooting: sample N action sequences uniformly, keep the one with the highest return.

The planner of Nagabandi et al. 2018 (arXiv:1708.02596). It sees only a rollout
function, so it plans against any world model, or an analytic toy in the tests.

Shape legend: N candidates, L horizon, A action dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gymnasium import spaces

from wmlab.core.config import Config, ranges
from wmlab.core.protocols import RolloutFn
from wmlab.planners.common import SamplingPlanner, check_action_space, score


@dataclass(frozen=True)
class RandomShootingConfig(Config):
    """Random-shooting search over action sequences."""

    limits = ranges(counts="horizon candidates")

    horizon: int = 10
    """Length L of each candidate action sequence."""
    candidates: int = 1000
    """Number N of sequences sampled and scored per plan."""


class RandomShooting(SamplingPlanner):
    """Planner: `plan(rollout_fn, state, action_space)` -> the best of `candidates` uniform
    sequences: actions (L, A) for a Box, indices (L,) for a Discrete space.

    Candidates are drawn on the CPU from `generator` (or one seeded with `seed`), so that a plan
    does not depend on the device, and handed to `rollout_fn(state, actions)` on `device`:
    float (N, L, A) within the bounds, or int64 indices (N, L) for a Discrete space.
    """

    config: RandomShootingConfig

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
        candidates = self.sample(action_space, self.config.candidates)
        # A NaN return (a diverging model) scores -inf and never wins the argmax.
        return candidates[score(rollout_fn, state, candidates, self.device).argmax()]
