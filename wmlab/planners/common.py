"""What the sampling planners (random shooting, CEM, MPPI) share: construction (config, generator,
device), the spaces they take, action bounds, candidate scoring, categorical sampling, and the
generator that draws every random number.

Continuous spreads are measured in units of half the action range, so that one setting (TD-MPC2's
min/max std 0.05/2 for actions in [-1, 1]) means the same for any bounds.

Shape legend: N candidates, L horizon, A action dim, K number of discrete actions.
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
class SamplingConfig(Config):
    """The settings every sampling planner has; each planner's config adds its own and sets its
    paper's defaults."""

    limits = ranges(counts="horizon iterations", fractions="uniform_mix", non_negative="noise_exponent")

    horizon: int = 12
    """Length L of each candidate action sequence."""
    iterations: int = 10
    """Refits of the sampling distribution per plan."""
    uniform_mix: float = 0.0
    """Discrete spaces: weight of the uniform distribution mixed into each refit, so that every
    action keeps at least uniform_mix / K probability (the discrete counterpart of min_std)."""
    noise_exponent: float = 0.0
    """Exponent beta of the sampling noise's power spectrum 1 / f^beta along the horizon (iCEM's
    colored noise, arXiv:2008.06389): 0 white (PlaNet, TD-MPC2), 2-3 smooth sequences that hold a
    direction and travel farther, for plans that must detour. Box actions only: a Discrete space's
    per-step categoricals are drawn independently whatever its value."""


def make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    """The CPU generator a planner draws from: the one given, or a new one seeded with `seed`."""
    if generator is not None and seed is not None:
        raise ValueError("pass a generator or a seed, not both")
    if generator is None:
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(seed)
    return generator


class SamplingPlanner:
    """What every planner keeps: its config, the CPU generator it draws every random number from
    (the one given, or a new one seeded with `seed`), so that a plan does not depend on the device,
    and the device its candidates are handed to the rollout function on."""

    def __init__(
        self,
        config: Any,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ):
        self.config = config
        self.generator = make_generator(generator, seed)
        self.device = torch.device(device)
        #: After each plan, for inspection and logging: the sampling distribution it ended with.
        self.distribution: dict[str, torch.Tensor] = {}


def check_action_space(action_space: spaces.Space, planner: str = "random shooting") -> None:
    """Raise IncompatibleSpaceError unless `planner` can sample from `action_space`: a Discrete
    space or a bounded 1-D Box."""
    if isinstance(action_space, spaces.Discrete):
        return
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        if np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high)):
            return
        raise IncompatibleSpaceError(
            f"{planner} samples uniformly within the action bounds, and {action_space} is unbounded"
        )
    raise IncompatibleSpaceError(f"{planner} takes a 1-D Box or a Discrete action space, got {action_space}")


def colored_noise(count: int, length: int, size: int, exponent: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise (count, length, size) on the CPU, of unit variance at every step, whose power
    spectrum along the length falls as 1 / f^exponent (iCEM, Pinneri et al. 2020,
    arXiv:2008.06389, Sec. 3.1): 0 is white noise, 1 pink, 2 brown (a random walk's smoothness),
    so that sampled action sequences hold their direction longer and travel farther.

    Frequencies of a real signal of `length` samples, the lowest (constant) one taking the weight of
    1 / length; each Fourier coefficient is drawn with a standard deviation of f^(-exponent / 2)
    (the constant and, for an even length, the alternating one real), and the inverse transform is
    divided by its exact per-step standard deviation."""
    if exponent == 0:
        return torch.randn((count, length, size), generator=generator)
    frequencies = torch.fft.rfftfreq(length, dtype=torch.float64)
    frequencies[0] = 1.0 / length
    amplitude = frequencies ** (-exponent / 2)  # (F,)
    real = torch.randn((count, size, len(frequencies)), generator=generator, dtype=torch.float64) * amplitude
    imaginary = torch.randn((count, size, len(frequencies)), generator=generator, dtype=torch.float64) * amplitude
    # Coefficients without an imaginary part (the constant; the alternating one at an even length)
    # get sqrt(2) times the spread, so that each carries the power of a complex pair.
    real_only = [0] + ([len(frequencies) - 1] if length % 2 == 0 and length > 1 else [])
    imaginary[..., real_only] = 0.0
    real[..., real_only] *= 2**0.5
    signal = torch.fft.irfft(torch.complex(real, imaginary), n=length)  # (count, size, length)
    # irfft: x_t = (c_0 + 2 sum_k Re(c_k e^{2 pi i k t / L}) + c_nyquist (-1)^t) / L, so
    # Var x_t = (2 a_0^2 + 4 sum_interior a_k^2 + 2 a_nyquist^2) / L^2, the same for every t.
    weight = torch.full_like(amplitude, 4.0)
    weight[real_only] = 2.0
    variance = (weight * amplitude**2).sum() / length**2
    return (signal / variance.sqrt()).transpose(1, 2).float().contiguous()


def check_space(action_space: spaces.Space, planner: str) -> None:
    """A bounded 1-D Box or a Discrete space starting at 0 (indices are probabilities' columns)."""
    check_action_space(action_space, planner)
    if isinstance(action_space, spaces.Discrete) and int(action_space.start) != 0:
        raise IncompatibleSpaceError(f"{planner} takes Discrete actions that start at 0, got {action_space}")


def score(rollout_fn: RolloutFn, state: Any, candidates: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Returns (N,) of the candidates, float32 on `device`; a NaN (a diverging model) becomes -inf
    so that it is never chosen."""
    N = candidates.shape[0]
    returns = torch.as_tensor(rollout_fn(state, candidates), device=device)
    if tuple(returns.shape) != (N,):
        raise ShapeError(f"rollout_fn returns: expected (N,) with N={N}, got {tuple(returns.shape)}")
    return torch.nan_to_num(returns.float(), nan=-float("inf"))


def sample_categorical(probabilities: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` index sequences from per-step probabilities (L, K): int64 (count, L)."""
    draws = torch.multinomial(probabilities.cpu(), count, replacement=True, generator=generator)  # (L, count)
    return draws.T.contiguous().to(probabilities.device)


def mix_with_uniform(probabilities: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * p + weight / K over the last dimension: no action's probability falls below
    weight / K, the discrete counterpart of a minimum standard deviation."""
    if weight <= 0:
        return probabilities
    return (1 - weight) * probabilities + weight / probabilities.shape[-1]


def check_prior(prior: Any, action_space: spaces.Space, horizon: int, device: torch.device) -> torch.Tensor:
    """Prior sequences as a tensor: float (P, L, A) for a Box, int64 indices (P, L) for a Discrete space."""
    prior = torch.as_tensor(prior, device=device)
    if isinstance(action_space, spaces.Discrete):
        if prior.ndim != 2 or prior.shape[1] != horizon or prior.is_floating_point():
            raise ShapeError(
                f"prior_actions: expected int64 indices (P, {horizon}), got {prior.dtype} {tuple(prior.shape)}"
            )
        return prior.long()
    size = int(np.prod(action_space.shape))
    if prior.ndim != 3 or prior.shape[1:] != (horizon, size):
        raise ShapeError(f"prior_actions: expected (P, {horizon}, {size}), got {tuple(prior.shape)}")
    return prior.float()
