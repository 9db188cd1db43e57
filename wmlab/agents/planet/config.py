"""Configuration of PlaNet (Hafner et al. 2019, arXiv:1811.04551): the model-predictive-control
agent (wmlab.agents.mpc.agent) with an RSSM and the cross-entropy method."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from wmlab.agents.dreamer.config import V1_MODEL
from wmlab.agents.mpc.config import PlanningConfig
from wmlab.models.rssm import RSSMConfig
from wmlab.planners.cem import CEMConfig

#: PlaNet's RSSM: GRU 200, Gaussian latent 30, free nats 3 (arXiv:1811.04551, Sec. 4 and
#: Appendix A) — DreamerV1's model (which inherited it) with ReLU and 200-unit layers.
PLANET_MODEL = replace(V1_MODEL, activation="relu", size=replace(V1_MODEL.size, units=200))


@dataclass(frozen=True)
class PlaNetConfig(PlanningConfig):
    """An RSSM trained on replay; actions by CEM over the sum of imagined rewards, replanned each step.
    Action repeat belongs to the environment (e.g. dmc:cartpole-swingup's own setting)."""

    model: RSSMConfig = field(default_factory=lambda: PLANET_MODEL)
    """The world model (sizes, latents, free nats, loss scales)."""
    planner: CEMConfig = field(default_factory=CEMConfig)
    """The planner: horizon 12, 10 iterations, 1000 candidates, top 100 (PlaNet's)."""
    adam_epsilon: float = 1e-4
    """Adam epsilon (PlaNet's 1e-4)."""
    grad_clip: float = 1000.0
    """Largest global gradient norm per update (PlaNet's 1000); 0 turns clipping off."""
    exploration_noise: float = 0.3
    """While exploring: std of Gaussian noise added to the planned action, in units of half the
    action range (PlaNet: 0.3 for actions in [-1, 1]); for a Discrete space, the probability of a
    random action."""
    open_loop_report: bool = True
    """At the end of a run, write open-loop prediction videos and an imagined-vs-real reward figure."""
