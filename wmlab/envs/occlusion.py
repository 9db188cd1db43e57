"""Occlusion: the same task with stretches of blank observations (partial observability).

    make_env("occluded", env="dmc:cartpole-swingup", env_kwargs={"action_repeat": 2},
             start_probability=0.02, length=10)

`OcclusionWrapper` wraps an environment made by `make_env` (dict observations). Each episode is
susceptible to occlusion with probability `episode_probability`; in a susceptible episode, at
every step that is not already occluded, an occlusion begins with probability
`start_probability` and lasts `length` consecutive steps (fewer when the episode ends first).
During an occlusion the observation's "vector" is all zeros and its "image" all black (the keys
in `keys`); everything else — dynamics, rewards, the end of the episode — is untouched. The first
observation of an episode (from `reset`) is never occluded, so the agent always sees where it
starts.

`info` of every step says what happened:
- "occluded": whether this step's observation is blanked;
- "occlusion_step": k = 1 .. length, the index of this step within its occlusion (0 when not
  occluded), i.e. the number of blank observations seen so far in the stretch, this one included;
- "true_observation": the observation the environment produced, before blanking.

The occlusion schedule comes from the wrapper's own generator, seeded by `seed` and reseeded by
`reset(seed=...)`. It draws one number per reset and one at every step that does not continue an
occlusion, whatever the agent does, so two agents run on the same seeds for episodes of the same
length see exactly the same occlusions. The wrapper exports no state of
its own: a resumed training run restores the inner environment and restarts the schedule's
random stream.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium
import numpy as np

from wmlab.core.errors import WmlabError
from wmlab.envs.adapter import SeededWrapper, make_wrapped


class OcclusionWrapper(SeededWrapper):
    """Blank runs of consecutive observations (see the module docstring)."""

    seed_tag = 0x0CC1_0DE

    def __init__(
        self,
        env: gymnasium.Env,
        start_probability: float = 0.02,
        length: int = 10,
        episode_probability: float = 1.0,
        keys: Sequence[str] = ("image", "vector"),
        seed: int = 0,
    ):
        super().__init__(env, seed)
        if not 0.0 <= start_probability <= 1.0 or not 0.0 <= episode_probability <= 1.0:
            raise WmlabError(
                f"probabilities must lie in [0, 1], got start_probability={start_probability}, episode_probability={episode_probability}"
            )
        if int(length) < 1:
            raise WmlabError(f"an occlusion lasts at least 1 step, got length={length}")
        observed = set(getattr(env.observation_space, "spaces", {}))
        self.keys = tuple(key for key in keys if key in observed)
        if not self.keys:
            raise WmlabError(
                f"nothing to occlude: the environment observes {sorted(observed)}, the wrapper blanks {list(keys)}"
            )
        self.start_probability = float(start_probability)
        self.length = int(length)
        self.episode_probability = float(episode_probability)
        self._susceptible = False
        self._occlusion_step = 0  # k of the current step; 0 when not occluded

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        observation, info = super().reset(seed=seed, options=options)
        self._susceptible = bool(self._random.random() < self.episode_probability)
        self._occlusion_step = 0
        return observation, {**info, "occluded": False, "occlusion_step": 0, "true_observation": observation}

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        if 0 < self._occlusion_step < self.length:
            self._occlusion_step += 1
        else:
            self._occlusion_step = 0
            if self._susceptible and self._random.random() < self.start_probability:
                self._occlusion_step = 1
        occluded = self._occlusion_step > 0
        shown = self.blank(observation) if occluded else observation
        info = {**info, "occluded": occluded, "occlusion_step": self._occlusion_step, "true_observation": observation}
        return shown, reward, terminated, truncated, info

    def blank(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The observation with the occluded keys set to zeros of their own shape and dtype."""
        return {key: np.zeros_like(value) if key in self.keys else value for key, value in observation.items()}


def make_occluded(env: str, env_kwargs: Mapping[str, Any] | None = None, **options: Any) -> OcclusionWrapper:
    """`make_env(env, **env_kwargs)` wrapped in an `OcclusionWrapper(**options)` (the registered
    environment "occluded")."""
    return make_wrapped(OcclusionWrapper, "occluded", env, env_kwargs, options)
