"""PlaNet: an RSSM world model with CEM planning in its latent space (arXiv:1811.04551)."""

from wmlab.agents.planet.agent import PlaNetAgent
from wmlab.agents.planet.config import PlaNetConfig

__all__ = ["PlaNetAgent", "PlaNetConfig"]
