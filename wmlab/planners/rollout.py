"""The return of action sequences imagined by a world model: the rollout function that every
planning agent hands its planner (PlaNet and MPC alike).

Shape legend: N candidates, L horizon, A action dim.
"""

from __future__ import annotations

from typing import Any

import torch

from wmlab.core.protocols import WorldModel


def discounted_return(rewards: torch.Tensor, continues: torch.Tensor, discount: float) -> torch.Tensor:
    """sum_l discount^l * prod_{k<l} c_k * r_l for rewards, continues (N, L) -> (N,).

    r_l is received on arriving at state l, so it counts in full when every state before it was
    non-terminal; the first reward is always counted, and c_l, the probability that state l is not
    terminal, scales everything after it. With discount 1 and no predicted ends it is PlaNet's
    sum of rewards (arXiv:1811.04551, Sec. 3).
    """
    alive = torch.cumprod(torch.cat([torch.ones_like(continues[:, :1]), continues[:, :-1]], 1), 1)
    discounts = discount ** torch.arange(rewards.shape[1], device=rewards.device, dtype=rewards.dtype)
    return (rewards * alive * discounts).sum(1)


def expand_state(state: Any, count: int) -> Any:
    """One state (1, ...) (or (D,) for a feed-forward model's observation), or a dict of them,
    repeated for `count` candidates (count, ...) without copying."""
    if isinstance(state, dict):
        return {name: value.expand(count, *value.shape[1:]) for name, value in state.items()}
    return state.expand(count, -1)


@torch.no_grad()
def imagined_return(model: WorldModel, state: Any, actions: torch.Tensor, discount: float = 1.0) -> torch.Tensor:
    """The discounted return (N,) of candidates (N, L, A) (indices (N, L) for a Discrete space)
    imagined by `model` from one state; rewards and continue probabilities are the model's own
    (continues are 1 where the model predicts none)."""
    trajectory = model.imagine(expand_state(state, actions.shape[0]), actions)
    return discounted_return(trajectory.rewards, trajectory.continues, discount)
