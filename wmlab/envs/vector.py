"""Vector environments of wmlab environments, and a collector that turns them into replay steps.

Autoreset mode: NEXT_STEP (gymnasium's default). When an episode ends, the step that ends it
returns the episode's final observation; the following `step` call resets that environment,
ignores its action and returns the first observation of the next episode with reward 0. That
maps one to one onto wmlab's step convention (`wmlab.core.types`): the final observation becomes
a stored step with is_last (and is_terminal when it terminated), and the reset observation the
next stored step with is_first and a zero action. We chose it over SAME_STEP because:
- every step call yields exactly one stored step per environment, ready for
  `ReplayBuffer.add_batch`, and every observation the policy sees is one that is stored;
- the policy sees the final observation of an episode before the first one of the next, as in
  the single-environment training loop, so recurrent agents filter the same stream they train on;
- SAME_STEP hides the final observation in `info["final_obs"]`, an object array that must be
  unpacked per environment and produces two stored steps in one call.
The cost is one step call per episode per environment whose action is discarded.

    envs = make_vector_env("minigrid:DoorKey-5x5", num_envs=4, seed=0)
    collector = VectorCollector(envs)
    replay.add_batch(collector.reset())
    while ...:
        actions, state = agent.act(collector.observations, state, explore=True)
        replay.add_batch(collector.step(actions))
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper

from wmlab.envs.adapter import make_env


def make_vector_env(
    env_id: str,
    num_envs: int,
    asynchronous: bool = False,
    seed: int | None = None,
    **env_kwargs: Any,
) -> VectorEnv:
    """`num_envs` copies of `make_env(env_id, **env_kwargs)` with NEXT_STEP autoreset.

    asynchronous: one process per environment (AsyncVectorEnv), worth it when a step costs more
        than the inter-process round trip (pixels rendered by a simulator, Crafter); otherwise
        they step in turn in this process (SyncVectorEnv).
    seed: environment i is reset with seed + i at the first `reset()` that gives no seed (exactly
        as `make_env(env_id).reset(seed=seed + i)`), and the batched action space is seeded.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    factories = [partial(make_env, env_id, **env_kwargs) for _ in range(num_envs)]
    if asynchronous:
        envs = AsyncVectorEnv(factories, autoreset_mode=AutoresetMode.NEXT_STEP)
    else:
        envs = SyncVectorEnv(factories, autoreset_mode=AutoresetMode.NEXT_STEP)
    if seed is None:
        return envs
    envs.action_space.seed(seed)
    return _SeedOnFirstReset(envs, seed)


class _SeedOnFirstReset(VectorWrapper):
    """Use the seed given at construction for the first reset that does not give one."""

    def __init__(self, env: VectorEnv, seed: int) -> None:
        super().__init__(env)
        self._pending_seed: int | None = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


class VectorCollector:
    """Steps a NEXT_STEP vector environment and returns, per call, one wmlab step per environment.

    Each returned dict holds the observation keys plus action, reward, is_first, is_last and
    is_terminal, each with a leading num_envs dimension, in the convention of wmlab.core.types.
    """

    def __init__(self, envs: VectorEnv) -> None:
        mode = envs.metadata.get("autoreset_mode")
        if mode is not None and AutoresetMode(mode) != AutoresetMode.NEXT_STEP:
            raise ValueError(
                f"VectorCollector needs a NEXT_STEP autoreset vector environment, got {mode}; use make_vector_env"
            )
        self.envs = envs
        self.num_envs = envs.num_envs
        space = envs.single_action_space
        self._zero_action = np.zeros((self.num_envs, *space.shape), dtype=space.dtype if space.shape else np.int64)
        self._observations: dict[str, np.ndarray] | None = None
        # Which environments ended their episode at the previous step: the vector environment
        # resets them at this one.
        self._resetting = np.zeros(self.num_envs, dtype=bool)
        self._is_first = np.ones(self.num_envs, dtype=bool)
        self.episode_returns = np.zeros(self.num_envs)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        #: (env index, return, length) of each episode completed since the collector was made.
        self.finished_episodes: list[tuple[int, float, int]] = []

    @property
    def observations(self) -> dict[str, np.ndarray]:
        """The latest observations (num_envs, ...) plus "is_first", as `Agent.act` takes them."""
        if self._observations is None:
            raise RuntimeError("call reset() before reading observations")
        return {**self._observations, "is_first": self._is_first.copy()}

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Reset every environment; returns their first steps."""
        observations, _ = self.envs.reset(seed=seed)
        self._resetting[:] = False
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0
        first = np.ones(self.num_envs, dtype=bool)
        return self._record(observations, self._zero_action, np.zeros(self.num_envs), first, ~first, ~first)

    def step(self, actions: Any) -> dict[str, np.ndarray]:
        """Step every environment with `actions` (num_envs, ...); returns the stored steps."""
        if self._observations is None:
            raise RuntimeError("call reset() before step()")
        observations, rewards, terminated, truncated, _ = self.envs.step(actions)
        first = self._resetting.copy()
        # The environments that reset ignored their action: store the zero action of a first step.
        actions = np.where(
            first.reshape(-1, *[1] * (self._zero_action.ndim - 1)), self._zero_action, np.asarray(actions)
        )
        rewards = np.where(first, 0.0, rewards)
        terminated = np.asarray(terminated, dtype=bool) & ~first
        last = (terminated | np.asarray(truncated, dtype=bool)) & ~first

        self.episode_returns = np.where(first, 0.0, self.episode_returns + rewards)
        self.episode_lengths = np.where(first, 0, self.episode_lengths + 1)
        for index in np.flatnonzero(last):
            self.finished_episodes.append(
                (int(index), float(self.episode_returns[index]), int(self.episode_lengths[index]))
            )
        self._resetting = last
        return self._record(observations, actions, rewards, first, last, terminated)

    def close(self) -> None:
        self.envs.close()

    def _record(self, observations, actions, rewards, first, last, terminal) -> dict[str, np.ndarray]:
        self._observations = observations
        self._is_first = first
        return {
            **observations,
            "action": np.asarray(actions).astype(self._zero_action.dtype, copy=False),
            "reward": np.asarray(rewards, dtype=np.float32),
            "is_first": first,
            "is_last": last,
            "is_terminal": terminal,
        }
