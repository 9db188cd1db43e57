"""Configuration of PlaNet (Hafner et al. 2019, arXiv:1811.04551)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wmlab.models.rssm import RSSMConfig, RSSMLossScales
from wmlab.planners.cem import CEMConfig

#: PlaNet's RSSM: GRU 200, Gaussian latent 30, free nats 3 (arXiv:1811.04551, Sec. 4 and Appendix A).
PLANET_MODEL = RSSMConfig(
    size=None,
    deterministic_size=200,
    hidden_size=200,
    stochastic_size=30,
    classes=0,
    latent="gaussian",
    min_std=0.1,
    unimix=0.0,
    core="gru",
    gru_norm="none",
    prior_layers=1,
    posterior_layers=1,
    norm="none",
    activation="relu",
    cnn_depth=32,
    cnn_multipliers=(1, 2, 4, 8),
    cnn_kernel=4,
    units=200,
    encoder_layers=2,
    decoder_layers=2,
    reward_layers=2,
    symlog_inputs=False,
    vector_loss="mse",
    reward_head="mse",
    predict_continue=False,
    kl_balancing=False,
    free_nats=3.0,
    free_nats_average_first=True,
    # 0.5: unit-variance Gaussian log-likelihoods of images, vectors and rewards.
    loss_scales=RSSMLossScales(image=0.5, vector=0.5, reward=0.5, kl=1.0),
)


@dataclass(frozen=True)
class PlaNetConfig:
    """An RSSM trained on replay; actions by CEM over the sum of imagined rewards, replanned each step.
    Action repeat belongs to the environment (e.g. dmc:cartpole-swingup's own setting)."""

    model: RSSMConfig = field(default_factory=lambda: PLANET_MODEL)
    """The world model (sizes, latents, free nats, loss scales)."""
    planner: CEMConfig = field(default_factory=CEMConfig)
    """The planner: horizon 12, 10 iterations, 1000 candidates, top 100 (PlaNet's)."""
    learning_rate: float = 1e-3
    """Adam learning rate of the world model."""
    adam_epsilon: float = 1e-4
    """Adam epsilon."""
    grad_clip: float = 1000.0
    """Largest global gradient norm per update; 0 turns clipping off."""
    random_steps: int = 1000
    """Environment steps (summed over environments) of uniform random actions before planning starts
    (PlaNet collects 5 random seed episodes; set this to 5 episodes' worth of steps to match)."""
    exploration_noise: float = 0.3
    """While exploring: std of Gaussian noise added to the planned action, in units of half the action
    range (PlaNet: 0.3 for actions in [-1, 1]); for a Discrete space, the probability of a random action."""
    open_loop_report: bool = True
    """At the end of a run, write open-loop prediction videos and an imagined-vs-real reward figure."""
