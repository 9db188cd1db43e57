"""An actor-critic learned on generated frames (DIAMOND's, and IRIS's): one learner, any world
model that imagines frames, rewards and ends (see learner.py for the interface it needs)."""

from wmlab.agents.imagination.config import ImaginationConfig
from wmlab.agents.imagination.learner import ImaginationLearner

__all__ = ["ImaginationConfig", "ImaginationLearner"]
