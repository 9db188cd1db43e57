"""Model-based MPC with a learned feed-forward dynamics model (Nagabandi et al. 2018)."""

from wmlab.agents.mpc.agent import MPCAgent
from wmlab.agents.mpc.config import MPCConfig

__all__ = ["MPCAgent", "MPCConfig"]
