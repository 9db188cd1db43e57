"""Configuration of model-based MPC (Nagabandi et al. 2018, arXiv:1708.02596)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wmlab.core.config import NON_NEGATIVE, POSITIVE, Config, between, ranges
from wmlab.models.mlp import MLPWorldModelConfig
from wmlab.planners.shooting import RandomShootingConfig


@dataclass(frozen=True)
class MPCConfig(Config):
    """A feed-forward dynamics model trained on replay; actions by random-shooting MPC through it."""

    limits = ranges(
        discount=between(0, 1, low_open=True),
        learning_rate=POSITIVE,
        grad_clip=NON_NEGATIVE,
        random_steps=NON_NEGATIVE,
        exploration_noise=NON_NEGATIVE,
    )

    model: MLPWorldModelConfig = field(default_factory=MLPWorldModelConfig)
    """The world model: sizes, normalisation, loss scales."""
    planner: RandomShootingConfig = field(default_factory=RandomShootingConfig)
    """The planner: horizon and number of candidate action sequences."""
    discount: float = 1.0
    """Discount of predicted rewards along a candidate sequence (the paper sums them undiscounted)."""
    learning_rate: float = 1e-3
    """Adam learning rate of the world model."""
    grad_clip: float = 100.0
    """Largest global gradient norm per update; 0 turns clipping off."""
    random_steps: int = 1000
    """Environment steps (summed over parallel environments) of uniform random actions before planning
    starts, to give the model data from everywhere (the paper's random dataset)."""
    exploration_noise: float = 0.0
    """While exploring after `random_steps`: for a Box, the std of Gaussian noise added to the planned
    action, as a fraction of the action range; for a Discrete space, the probability of a random action."""
