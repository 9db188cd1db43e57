"""Dreamer V1, V2 and V3: one RSSM, one actor-critic learner, three presets."""

from wmlab.agents.dreamer.agent import DreamerAgent
from wmlab.agents.dreamer.config import DreamerConfig, DreamerV1Config, DreamerV2Config

__all__ = ["DreamerAgent", "DreamerConfig", "DreamerV1Config", "DreamerV2Config"]
