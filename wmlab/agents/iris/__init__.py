"""IRIS: an agent trained entirely in the imagination of a token world model (VQ tokenizer + GPT)."""

from wmlab.agents.iris.agent import IrisAgent
from wmlab.agents.iris.config import IrisConfig, IrisCPUConfig

__all__ = ["IrisAgent", "IrisCPUConfig", "IrisConfig"]
