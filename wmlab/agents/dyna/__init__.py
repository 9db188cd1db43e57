"""The Dyna family of Sutton & Barto chapter 8 (Dyna-Q, Dyna-Q+, prioritized sweeping, trajectory
sampling) and Dyna-2 (Silver, Sutton & Mueller 2008). See README.md in this folder."""

from wmlab.agents.dyna.agent import (
    Dyna2Agent,
    DynaQAgent,
    DynaQPlusAgent,
    PrioritizedSweepingAgent,
    TabularAgent,
    TrajectorySamplingAgent,
)
from wmlab.agents.dyna.config import Dyna2Config, DynaConfig

__all__ = [
    "Dyna2Agent",
    "Dyna2Config",
    "DynaConfig",
    "DynaQAgent",
    "DynaQPlusAgent",
    "PrioritizedSweepingAgent",
    "TabularAgent",
    "TrajectorySamplingAgent",
]
