"""Configuration of TD-MPC2 (Hansen, Su & Wang, arXiv:2310.16828); defaults from its config.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from wmlab.core.config import Config, ranges
from wmlab.models.tdmpc import TDMPCModelConfig
from wmlab.planners.mppi import MPPIConfig


def heuristic_discount(episode_length: int, denominator: float = 5.0, low: float = 0.95, high: float = 0.995) -> float:
    """TD-MPC2's discount for episodes of `episode_length` steps: clip((L/5 - 1) / (L/5), 0.95, 0.995)
    (0.99 for DMC's 500 steps; 0.975 for Pendulum-v1's 200)."""
    fraction = episode_length / denominator
    return min(max((fraction - 1) / fraction, low), high)


@dataclass(frozen=True)
class TDMPC2Config(Config):
    """An implicit world model trained by TD learning, acting by MPPI in its latent space.

    Train on windows of planner.horizon + 1 steps: `--train.sequence-length 4` with the default
    horizon of 3 (longer windows are cut to their first horizon + 1 steps).
    """

    limits = ranges(
        positive="learning_rate",
        non_negative="encoder_learning_rate_scale grad_clip random_steps extra_iterations_for_large_actions",
    )

    model: TDMPCModelConfig = field(default_factory=TDMPCModelConfig)
    """The world model: size preset, widths, two-hot bins, loss scales, discount."""
    planner: MPPIConfig = field(default_factory=MPPIConfig)
    """MPPI: horizon (also the training horizon), samples, elites, iterations, policy trajectories."""
    plan: bool = True
    """Act by MPPI planning; off, act with the policy prior alone (TD-MPC2's mpc=false)."""
    learning_rate: float = 3e-4
    """Adam learning rate of the model and of the policy prior."""
    encoder_learning_rate_scale: float = 0.3
    """The encoder learns at learning_rate times this."""
    grad_clip: float = 20.0
    """Largest global gradient norm of each update (the model's and the policy's separately)."""
    random_steps: int = 2500
    """Environment steps of uniform random actions before planning starts (TD-MPC2's seed steps,
    max(1000, 5 x episode length): 2500 on DMC)."""
    extra_iterations_for_large_actions: int = 2
    """Extra MPPI iterations when the action has 20 or more dimensions (TD-MPC2's heuristic)."""
    compile: bool = False
    """torch.compile the planner's value estimate and the loss (measure first: it may not pay on a CPU)."""
