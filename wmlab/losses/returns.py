"""Returns for actor-critic learning in imagination, and DreamerV3's return normalisation.

Shape legend: B batch (imagined trajectories), L horizon.
"""

from __future__ import annotations

import torch

from wmlab.core.shapes import check_shape


def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    continues: torch.Tensor,
    bootstrap: torch.Tensor,
    lambda_: float,
    discount: float,
) -> torch.Tensor:
    """TD(lambda) returns (B, L), computed backwards from `bootstrap` (B,):

        R_t = r_t + discount * c_t * ((1 - lambda) * v_t + lambda * R_{t+1}),   R_L = bootstrap

    where, for the transition t -> t + 1 of an imagined trajectory, r_t is the reward received on
    arriving (B, L), c_t the probability that the arrival state is not terminal (B, L), and v_t
    the value of the arrival state (B, L). Eq. 7, arXiv:2301.04104v1 (DreamerV3) and Eq. 6,
    arXiv:1912.01603 (DreamerV1), with their per-state indices shifted by one: DreamerV3's
    R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1}), R_H = v_H, is
    lambda_returns(r[:, 1:], v[:, 1:], c[:, 1:], v[:, -1], lambda, gamma).
    """
    sizes = check_shape("rewards", rewards, ("B", "L"))
    check_shape("values", values, ("B", "L"), sizes)
    check_shape("continues", continues, ("B", "L"), sizes)
    check_shape("bootstrap", bootstrap, ("B",), sizes)
    # Everything that does not depend on R_{t+1} is computed for all steps at once, leaving the
    # backward loop one fused multiply-add per step.
    discounts = discount * continues
    partial = rewards + discounts * (1 - lambda_) * values
    carried = discounts * lambda_
    returns = []
    following = bootstrap
    for t in reversed(range(sizes["L"])):
        following = partial[:, t] + carried[:, t] * following
        returns.append(following)
    return torch.stack(returns[::-1], 1)


def horizon_weighted_returns(returns: torch.Tensor, values: torch.Tensor, confidence_decay: float) -> torch.Tensor:
    """Horizon-aware targets (B, L): c_t * R_t + (1 - c_t) * v_t with the confidence
    c_t = confidence_decay ** t falling with imagination depth t (0 at the real start state), so
    that returns computed from deep, less trustworthy imagined states lean on the critic's value
    v_t of the state itself (B, L). confidence_decay = 1 gives the plain lambda-returns."""
    sizes = check_shape("returns", returns, ("B", "L"))
    check_shape("values", values, ("B", "L"), sizes)
    if not 0.0 <= confidence_decay <= 1.0:
        raise ValueError(f"confidence_decay must lie in [0, 1], got {confidence_decay}")
    if confidence_decay == 1.0:
        return returns
    depth = torch.arange(sizes["L"], device=returns.device, dtype=returns.dtype)
    confidence = confidence_decay**depth  # (L,)
    return confidence * returns + (1 - confidence) * values


def update_return_percentiles(
    returns: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    decay: float = 0.99,
    low_percentile: float = 5.0,
    high_percentile: float = 95.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponential moving averages of the batch's 5th and 95th percentiles of `returns` (any
    shape): (decay * low + (1 - decay) * Per(R, 5), decay * high + (1 - decay) * Per(R, 95)).
    DreamerV3 (Eq. 12, arXiv:2301.04104v1; authors' config: rate 0.01, percentiles 5 / 95, no
    debiasing, so both start at 0)."""
    quantiles = torch.quantile(
        returns.detach().reshape(-1).float(),
        torch.tensor([low_percentile / 100, high_percentile / 100], device=returns.device),
    )
    return decay * low + (1 - decay) * quantiles[0], decay * high + (1 - decay) * quantiles[1]


def return_scale(low: torch.Tensor, high: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """S = max(limit, high - low): returns and values are divided by S only when their spread
    exceeds `limit`, so small returns are not amplified into noise (DreamerV3, Eq. 11-12,
    arXiv:2301.04104v1, limit 1)."""
    return torch.clamp_min(high - low, limit)
