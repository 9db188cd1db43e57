"""The cross-entropy method: fit a sampling distribution to the best candidates, repeat.

PlaNet's planner (arXiv:1811.04551, Sec. 3 "Planning algorithm"): a diagonal Gaussian over action
sequences of length L, initialised at the centre of the bounds with unit spread; each iteration
samples N candidates, scores them through the rollout function, and refits mean and standard
deviation to the top K; the plan is the final mean.

For a Discrete space (a wmlab extension) the distribution is a categorical per step, refitted to
the elite frequencies; the plan is each step's most probable action.

Shape legend: N candidates, L horizon, A action dim, K number of discrete actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gymnasium import spaces

from wmlab.core.config import between, ranges
from wmlab.core.protocols import RolloutFn
from wmlab.core.spaces import BoxBounds
from wmlab.planners.common import (
    SamplingConfig,
    SamplingPlanner,
    check_space,
    colored_noise,
    mix_with_uniform,
    sample_categorical,
    score,
)


@dataclass(frozen=True)
class CEMConfig(SamplingConfig):
    """Cross-entropy method; the defaults are PlaNet's (arXiv:1811.04551, Sec. 3): horizon 12, 10
    iterations, no uniform mix, white noise."""

    limits = ranges(
        counts="candidates",
        positive="initial_std",
        non_negative="min_std",
        elites=between(1, "candidates"),
        momentum=between(0, 1, high_open=True),
    )

    candidates: int = 1000
    """Sequences N sampled and scored per iteration."""
    elites: int = 100
    """Best candidates K that the distribution is refitted to."""
    momentum: float = 0.0
    """Weight of the previous iteration's parameters in each refit: new = momentum * old +
    (1 - momentum) * fitted. PlaNet refits without smoothing (0)."""
    initial_std: float = 1.0
    """Standard deviation of the first iteration, in units of half the action range (PlaNet: 1 for
    actions in [-1, 1])."""
    min_std: float = 0.0
    """Floor on the refitted standard deviation, in units of half the action range (PlaNet: none).
    A positive floor keeps the search from collapsing on an early, wrong elite."""


class CEM(SamplingPlanner):
    """Planner: `plan(rollout_fn, state, action_space)` -> the final mean (L, A) for a Box, or the
    most probable index per step (L,) for a Discrete space.

    `rollout_fn(state, candidates)` gets float (N, L, A) within the bounds, or int64 indices
    (N, L), on `device`, and returns (N,). Random numbers come from `generator` on the CPU (or one
    seeded with `seed`), so that a plan does not depend on the device.
    """

    #: After each plan: mean and std (L, A), or probabilities (L, K); for inspection only.
    distribution: dict[str, torch.Tensor]
    config: CEMConfig

    @torch.no_grad()
    def plan(self, rollout_fn: RolloutFn, state: Any, action_space: spaces.Space) -> torch.Tensor:
        check_space(action_space, "CEM")
        if isinstance(action_space, spaces.Discrete):
            return self._plan_discrete(rollout_fn, state, int(action_space.n))
        return self._plan_box(rollout_fn, state, BoxBounds(action_space).to(self.device))

    def _plan_box(self, rollout_fn: RolloutFn, state: Any, bounds: BoxBounds) -> torch.Tensor:
        config = self.config
        L, A, N = config.horizon, bounds.size, config.candidates
        # The search runs in units of half the range around the centre, so spreads are scale-free.
        mean = torch.zeros(L, A, device=self.device)
        std = torch.full((L, A), config.initial_std, device=self.device)
        for _ in range(config.iterations):
            noise = colored_noise(N, L, A, config.noise_exponent, self.generator).to(self.device)
            unit = (mean + std * noise).clamp(-1.0, 1.0)  # PlaNet clips candidates to the bounds
            returns = score(rollout_fn, state, bounds.from_unit(unit), self.device)
            elites = unit[returns.topk(config.elites).indices]  # (K, L, A)
            fitted_mean = elites.mean(0)
            fitted_std = elites.std(0, unbiased=False)
            mean = config.momentum * mean + (1 - config.momentum) * fitted_mean
            std = (config.momentum * std + (1 - config.momentum) * fitted_std).clamp_min(config.min_std)
        self.distribution = {"mean": bounds.from_unit(mean), "std": bounds.half_range * std}
        return bounds.from_unit(mean)

    def _plan_discrete(self, rollout_fn: RolloutFn, state: Any, K: int) -> torch.Tensor:
        config = self.config
        L, N = config.horizon, config.candidates
        probabilities = torch.full((L, K), 1.0 / K, device=self.device)
        for _ in range(config.iterations):
            candidates = sample_categorical(probabilities, N, self.generator)  # (N, L)
            returns = score(rollout_fn, state, candidates, self.device)
            elites = candidates[returns.topk(config.elites).indices]  # (K_elite, L)
            frequencies = torch.nn.functional.one_hot(elites, K).float().mean(0)  # (L, K)
            probabilities = config.momentum * probabilities + (1 - config.momentum) * frequencies
            probabilities = mix_with_uniform(probabilities, config.uniform_mix)
        self.distribution = {"probabilities": probabilities}
        return probabilities.argmax(-1)
