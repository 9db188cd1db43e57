"""TD-MPC2 (Hansen, Su & Wang, arXiv:2310.16828): MPPI in the latent space of an implicit world model."""

from wmlab.agents.tdmpc2.agent import TDMPC2Agent
from wmlab.agents.tdmpc2.config import TDMPC2Config

__all__ = ["TDMPC2Agent", "TDMPC2Config"]
