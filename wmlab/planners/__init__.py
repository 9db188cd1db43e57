"""Planners that search action sequences against a rollout function; none of them sees a model.

- `CEM`: the cross-entropy method (PlaNet's planner).
- `MPPI`: return-weighted refits with a policy prior and warm starts (TD-MPC2's planner).
- `RandomShooting`: the best of N uniform sequences (Nagabandi et al. 2018).
"""

from wmlab.planners.cem import CEM, CEMConfig
from wmlab.planners.mppi import MPPI, MPPIConfig
from wmlab.planners.shooting import RandomShooting, RandomShootingConfig

__all__ = ["CEM", "CEMConfig", "MPPI", "MPPIConfig", "RandomShooting", "RandomShootingConfig"]
