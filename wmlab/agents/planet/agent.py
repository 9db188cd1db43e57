"""PlaNet (Hafner et al. 2019, arXiv:1811.04551): learn an RSSM from replay, act by planning in its
latent space with the cross-entropy method, replanning at every step.

PlaNet is the model-predictive-control agent (wmlab.agents.mpc.agent) with PlaNet's preset
(wmlab.agents.planet.config.PlaNetConfig): the agent builds the RSSM and CEM from it.
"""

from __future__ import annotations

from wmlab.agents.mpc.agent import MPCAgent

#: The one model-predictive-control agent; the name PlaNet's registry entry and callers use.
PlaNetAgent = MPCAgent

__all__ = ["PlaNetAgent"]
