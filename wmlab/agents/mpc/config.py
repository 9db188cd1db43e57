"""Configuration of the model-predictive-control agent (wmlab.agents.mpc.agent) and its MPC preset
(Nagabandi et al. 2018, arXiv:1708.02596); PlaNet's preset is wmlab.agents.planet.config."""

from __future__ import annotations

from dataclasses import dataclass, field

from wmlab.core.config import Config, between, ranges
from wmlab.models.mlp import MLPWorldModelConfig
from wmlab.planners.shooting import RandomShootingConfig


@dataclass(frozen=True)
class PlanningConfig(Config):
    """What every model-predictive-control agent shares: a world model trained on replay, a
    planner over the model's imagined returns, replanned at every step. A preset adds the model
    and the planner (MPCConfig, PlaNetConfig), and the agent builds whichever it is given."""

    limits = ranges(
        positive="learning_rate adam_epsilon",
        non_negative="grad_clip random_steps exploration_noise",
        discount=between(0, 1, low_open=True),
    )

    discount: float = 1.0
    """Discount of imagined rewards along a candidate sequence (both papers sum them undiscounted)."""
    learning_rate: float = 1e-3
    """Adam learning rate of the world model."""
    adam_epsilon: float = 1e-8
    """Adam epsilon."""
    grad_clip: float = 100.0
    """Largest global gradient norm per update; 0 turns clipping off."""
    random_steps: int = 1000
    """Environment steps (summed over parallel environments) of uniform random actions before planning
    starts, to give the model data from everywhere."""
    exploration_noise: float = 0.0
    """While exploring after `random_steps`: for a Box, the std of Gaussian noise added to the planned
    action, in units of half the action range (the planners' unit for spreads; PlaNet: 0.3 for
    actions in [-1, 1]); for a Discrete space, the probability of a random action."""
    open_loop_report: bool = False
    """At the end of a run, write open-loop prediction videos and an imagined-vs-real reward figure
    (models that filter and decode: the RSSM)."""


@dataclass(frozen=True)
class MPCConfig(PlanningConfig):
    """A feed-forward dynamics model trained on replay; actions by random-shooting MPC through it."""

    model: MLPWorldModelConfig = field(default_factory=MLPWorldModelConfig)
    """The world model: sizes, normalisation, loss scales."""
    planner: RandomShootingConfig = field(default_factory=RandomShootingConfig)
    """The planner: horizon and number of candidate action sequences."""
