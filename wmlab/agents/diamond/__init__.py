"""DIAMOND: an agent trained entirely in the imagination of a diffusion world model."""

from wmlab.agents.diamond.agent import DiamondAgent
from wmlab.agents.diamond.config import DiamondConfig, DiamondCPUConfig

__all__ = ["DiamondAgent", "DiamondCPUConfig", "DiamondConfig"]
