"""World Models (Ha & Schmidhuber 2018): V, M and C trained in turn, C by CMA-ES in the dream or in reality."""

from wmlab.agents.world_models.agent import LinearController, WorldModelsAgent
from wmlab.agents.world_models.config import WorldModelsConfig, default_config

__all__ = ["LinearController", "WorldModelsAgent", "WorldModelsConfig", "default_config"]
