"""Random perturbations for robustness evaluation: observation noise and physics kicks.

    make_env("perturbed", env="dmc:cartpole-swingup", env_kwargs={"action_repeat": 2},
             observation_noise=0.1, kick_std=0.5, kick_every=10)

`PerturbationWrapper` wraps an environment made by `make_env` (dict observations) and applies:

- observation noise: independent Gaussian noise of standard deviation `observation_noise` added
  to every element of the "vector" observation (in the environment's units), and, for pixel
  observations, of standard deviation `image_noise` (in units of the full intensity range, so 0.1
  is 25.5 grey levels) added to "image", rounded and clipped to [0, 255];
- velocity kicks (MuJoCo environments such as dm_control's, whose unwrapped environment exposes
  `physics`): before every `kick_every`-th step of an episode, Gaussian noise of standard
  deviation `kick_std` is added to every generalised velocity, `physics.data.qvel`, so the
  agent has to recover from a push it did not cause.

The rewards are those of the perturbed system; `info["kicked"]` says whether this step began with
a kick, and `info["true_observation"]` holds the observation before noise.

The wrapper draws from its own generator, seeded by `seed` and reseeded by `reset(seed=...)`, so
that evaluations on the same seeds perturb every agent identically (as far as the trajectories
agree). It exports no state of its own: a resumed training run restores the inner environment and
restarts the perturbations' random stream.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium
import numpy as np

from wmlab.core.errors import WmlabError
from wmlab.envs.adapter import SeededWrapper, make_wrapped


def physics_of(env: gymnasium.Env) -> Any | None:
    """The MuJoCo physics (dm_control's `Physics`) behind an environment, or None."""
    return getattr(env.unwrapped, "physics", None)


class PerturbationWrapper(SeededWrapper):
    """Gaussian observation noise and random velocity kicks (see the module docstring)."""

    seed_tag = 0x5EED_0B5

    def __init__(
        self,
        env: gymnasium.Env,
        observation_noise: float = 0.0,
        image_noise: float = 0.0,
        kick_std: float = 0.0,
        kick_every: int = 10,
        seed: int = 0,
    ):
        super().__init__(env, seed)
        if observation_noise < 0 or image_noise < 0 or kick_std < 0:
            raise WmlabError(
                f"noise levels must be non-negative, got observation_noise={observation_noise}, image_noise={image_noise}, kick_std={kick_std}"
            )
        if int(kick_every) < 1:
            raise WmlabError(f"kick_every must be at least 1 step, got {kick_every}")
        if kick_std > 0 and physics_of(env) is None:
            raise WmlabError(
                "velocity kicks need a MuJoCo environment that exposes `physics` (e.g. dmc:cartpole-swingup); set kick_std to 0"
            )
        self.observation_noise = float(observation_noise)
        self.image_noise = float(image_noise)
        self.kick_std = float(kick_std)
        self.kick_every = int(kick_every)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        observation, info = super().reset(seed=seed, options=options)
        self._steps = 0
        return self._perturb(observation), {**info, "kicked": False, "true_observation": observation}

    def step(self, action):
        self._steps += 1
        kicked = self.kick_std > 0 and self._steps % self.kick_every == 0
        if kicked:
            velocities = physics_of(self.env).data.qvel
            velocities[:] += self._random.normal(0.0, self.kick_std, velocities.shape)
        observation, reward, terminated, truncated, info = self.env.step(action)
        return (
            self._perturb(observation),
            reward,
            terminated,
            truncated,
            {**info, "kicked": kicked, "true_observation": observation},
        )

    def _perturb(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        perturbed = dict(observation)
        if self.observation_noise > 0 and "vector" in perturbed:
            vector = np.asarray(perturbed["vector"])
            perturbed["vector"] = (vector + self._random.normal(0.0, self.observation_noise, vector.shape)).astype(
                vector.dtype
            )
        if self.image_noise > 0 and "image" in perturbed:
            image = np.asarray(perturbed["image"])
            noisy = image.astype(np.float32) + self._random.normal(0.0, 255.0 * self.image_noise, image.shape)
            perturbed["image"] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        return perturbed


def make_perturbed(env: str, env_kwargs: Mapping[str, Any] | None = None, **options: Any) -> PerturbationWrapper:
    """`make_env(env, **env_kwargs)` wrapped in a `PerturbationWrapper(**options)` (the
    registered environment "perturbed")."""
    return make_wrapped(PerturbationWrapper, "perturbed", env, env_kwargs, options)
