"""Model predictive path integral control as TD-MPC2 plans (arXiv:2310.16828, Sec. 3.2).

Each plan runs a few iterations of: sample N action sequences (some from a policy prior, the rest
from a diagonal Gaussian), score them through the rollout function, keep the top E, and refit the
Gaussian to the elites weighted by exp(temperature * (return - best return)) (MPPI's
return-weighted average; Williams et al. 2015, TD-MPC Sec. 3). The executed sequence is an elite
drawn with those weights; while exploring, the final standard deviation adds Gaussian noise.

Between calls the planner keeps its final mean: the next plan starts from it shifted forward by
the steps executed since (`plan(..., shift=k)`, one by default; the freed last steps at the
centre), with the spread reset to `max_std`. Call `reset()` when an
episode starts.

Discrete spaces (a wmlab extension, used by TD-MPC2 here for Discrete actions): the distribution
is a categorical per step; each iteration refits it to the weighted elite frequencies, mixed with
the uniform distribution (`uniform_mix`, the discrete counterpart of `min_std`); warm starts shift
the probabilities like the mean; while exploring, the executed actions are drawn from the final
probabilities instead of taken from the chosen elite.

Shape legend: N candidates, P prior sequences, E elites, L horizon, A action dim, K discrete actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from gymnasium import spaces

from wmlab.core.config import at_least, between, ranges
from wmlab.core.protocols import RolloutFn
from wmlab.core.spaces import BoxBounds
from wmlab.planners.common import (
    SamplingConfig,
    SamplingPlanner,
    check_prior,
    check_space,
    colored_noise,
    mix_with_uniform,
    sample_categorical,
    score,
)


@dataclass(frozen=True)
class MPPIConfig(SamplingConfig):
    """MPPI with a policy prior and warm starts; the defaults are TD-MPC2's (its config.yaml):
    horizon 3, 6 iterations, white noise; a uniform mix of 0.05 for Discrete spaces is a wmlab
    choice (the paper is continuous-only)."""

    limits = ranges(
        counts="samples",
        positive="temperature min_std",
        non_negative="policy_trajectories",
        elites=between(1, "samples"),
        max_std=at_least("min_std"),
    )

    horizon: int = 3
    iterations: int = 6
    samples: int = 512
    """Sequences N scored per iteration, the policy-prior sequences included."""
    elites: int = 64
    """Best sequences E that the distribution is refitted to."""
    policy_trajectories: int = 24
    """Sequences P that the caller draws from its policy prior and passes as `prior_actions`
    (TD-MPC2 rolls its policy through the model); the planner takes as many as it is given."""
    temperature: float = 0.5
    """Inverse temperature of the elite weights exp(temperature * (return - best return))."""
    min_std: float = 0.05
    """Floor on the refitted standard deviation, in units of half the action range."""
    max_std: float = 2.0
    """Standard deviation each plan starts from (and its ceiling), in units of half the action range."""
    uniform_mix: float = 0.05


def elite_weights(elite_returns: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(temperature * (R_e - max R)) normalised over the E elites (TD-MPC2's MPPI update,
    arXiv:2310.16828 Sec. 3.2). Subtracting the best return keeps exp from overflowing; if no
    return is finite, the elites weigh the same."""
    best = elite_returns.max()
    if not torch.isfinite(best):
        return torch.full_like(elite_returns, 1.0 / elite_returns.numel())
    weights = torch.exp(temperature * (elite_returns - best))
    return weights / weights.sum()


class MPPI(SamplingPlanner):
    """Planner: `plan(rollout_fn, state, action_space, prior_actions=None, explore=False)` ->
    actions (L, A) for a Box, indices (L,) for a Discrete space.

    `rollout_fn(state, candidates)` gets float (N, L, A) within the bounds or int64 indices (N, L)
    on `device`, and returns (N,). Random numbers come from `generator` on the CPU (or one seeded
    with `seed`), so that a plan does not depend on the device.
    """

    config: MPPIConfig
    #: The distribution the last plan ended with, which the next plan starts from shifted by
    #: one step: the mean (L, A) in action units for a Box, the probabilities (L, K) for a
    #: Discrete space; None after `reset()`. Agents planning for several environments swap it
    #: in and out per environment.
    previous_plan: torch.Tensor | None = None
    _shift = 1
    #: After each plan, for logging: "elite_returns" (E,), and "std" (L, A) or "probabilities" (L, K).
    distribution: dict[str, torch.Tensor]

    def reset(self) -> None:
        """Forget the previous plan (call at the start of an episode)."""
        self.previous_plan = None

    @torch.no_grad()
    def plan(
        self,
        rollout_fn: RolloutFn,
        state: Any,
        action_space: spaces.Space,
        prior_actions: Any | None = None,
        explore: bool = False,
        shift: int = 1,
    ) -> torch.Tensor:
        """The executed sequence: an elite drawn with its MPPI weight (plus exploration noise when
        `explore`). prior_actions: float (P, L, A) within the bounds, or indices (P, L), scored
        alongside N - P sampled sequences at every iteration. shift: environment steps executed
        since the previous plan (an agent that replans every k steps passes k), by which the warm
        start moves that plan forward."""
        check_space(action_space, "MPPI")
        L = self.config.horizon
        if shift < 1:
            raise ValueError(f"shift must be at least 1, got {shift}")
        self._shift = shift
        prior = None if prior_actions is None else check_prior(prior_actions, action_space, L, self.device)
        if prior is not None and prior.shape[0] >= self.config.samples:
            raise ValueError(
                f"prior_actions: {prior.shape[0]} sequences leave none of the {self.config.samples} samples to draw"
            )
        if isinstance(action_space, spaces.Discrete):
            return self._plan_discrete(rollout_fn, state, int(action_space.n), prior, explore)
        return self._plan_box(rollout_fn, state, BoxBounds(action_space).to(self.device), prior, explore)

    def _warm_start(self, fill: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """`previous` (L, ...) shifted forward by the plan's `shift`, the freed last steps taken from
        `fill` (L, ...); just `fill` when there is no previous plan of that shape or the shift
        spends it all."""
        start, shift = fill.clone(), self._shift
        if previous is not None and previous.shape == fill.shape and shift < len(fill):
            start[:-shift] = previous[shift:].to(self.device)
        return start

    def _choose(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(weights.cpu(), 1, generator=self.generator).to(self.device)[0]

    def _plan_box(
        self, rollout_fn, state, bounds: BoxBounds, prior: torch.Tensor | None, explore: bool
    ) -> torch.Tensor:
        config = self.config
        L, A = config.horizon, bounds.size
        sampled = config.samples - (0 if prior is None else prior.shape[0])
        # The search runs in units of half the range around the centre, so spreads are scale-free.
        previous = None if self.previous_plan is None else bounds.to_unit(self.previous_plan.to(self.device))
        mean = self._warm_start(torch.zeros(L, A, device=self.device), previous)
        std = torch.full((L, A), config.max_std, device=self.device)
        prior_unit = None if prior is None else bounds.to_unit(prior).clamp(-1.0, 1.0)
        for _ in range(config.iterations):
            noise = colored_noise(sampled, L, A, config.noise_exponent, self.generator).to(self.device)
            candidates = (mean + std * noise).clamp(-1.0, 1.0)
            if prior_unit is not None:
                candidates = torch.cat([prior_unit, candidates])
            returns = score(rollout_fn, state, bounds.from_unit(candidates), self.device)
            elite_returns, elite_indices = returns.topk(config.elites)
            elites = candidates[elite_indices]  # (E, L, A)
            weights = elite_weights(elite_returns, config.temperature)[:, None, None]
            mean = (weights * elites).sum(0)
            std = (weights * (elites - mean) ** 2).sum(0).sqrt().clamp(config.min_std, config.max_std)
        sequence = elites[self._choose(weights.flatten())]
        if explore:
            sequence = (sequence + std * torch.randn((L, A), generator=self.generator).to(self.device)).clamp(-1.0, 1.0)
        self.previous_plan = bounds.from_unit(mean)
        self.distribution = {"elite_returns": elite_returns, "std": bounds.half_range * std}
        return bounds.from_unit(sequence)

    def _plan_discrete(self, rollout_fn, state, K: int, prior: torch.Tensor | None, explore: bool) -> torch.Tensor:
        config = self.config
        L = config.horizon
        sampled = config.samples - (0 if prior is None else prior.shape[0])
        probabilities = self._warm_start(torch.full((L, K), 1.0 / K, device=self.device), self.previous_plan)
        for _ in range(config.iterations):
            candidates = sample_categorical(probabilities, sampled, self.generator)  # (N - P, L)
            if prior is not None:
                candidates = torch.cat([prior, candidates])
            returns = score(rollout_fn, state, candidates, self.device)
            elite_returns, elite_indices = returns.topk(config.elites)
            elites = candidates[elite_indices]  # (E, L)
            weights = elite_weights(elite_returns, config.temperature)
            probabilities = (weights[:, None, None] * F.one_hot(elites, K).float()).sum(0)  # (L, K)
            probabilities = mix_with_uniform(probabilities, config.uniform_mix)
        if explore:
            sequence = sample_categorical(probabilities, 1, self.generator)[0]
        else:
            sequence = elites[self._choose(weights)]
        self.previous_plan = probabilities
        self.distribution = {"elite_returns": elite_returns, "probabilities": probabilities}
        return sequence
