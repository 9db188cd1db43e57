"""Crafter (Hafner 2021, arXiv:2109.06780) as a gymnasium environment, and its score.

`crafter:reward` gives Crafter's reward: +1 the first time each achievement is unlocked in an
episode, and +/-0.1 for each health point gained or lost. `crafter:noreward` gives 0 reward
(the same world, for unsupervised and exploration agents); `info["reward"]` still holds what the
reward would have been.

Crafter ships no gymnasium registration and follows the old gym API (`step -> obs, reward, done,
info`, `reset() -> obs`, the seed fixed at construction). `CrafterEnv` adapts it:
- `reset(seed=s)` restarts the world sequence: Crafter draws episode k's world from (seed, k),
  so a seeded reset builds a fresh `crafter.Env(seed=s)` (cheap next to the world generation
  that every reset does anyway). `reset()` without a seed continues the sequence.
- `done` is split by Crafter's own `info["discount"]`: 0 when the player died, which is a
  termination; the episode-length limit (10000 steps by default) is a truncation.
- `info` passes through Crafter's keys: `achievements` (name -> count this episode),
  `inventory`, `discount`, `semantic`, `player_pos`, `reward`.

The Crafter score (paper, section 3) aggregates per-achievement success rates, s_i in percent
(the share of episodes in which achievement i was unlocked at least once), over the 22
achievements with a geometric mean that rewards rare achievements:
    S = exp(mean_i ln(1 + s_i)) - 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from wmlab.core.errors import WmlabError

TASKS = ("reward", "noreward")

#: Crafter's 22 achievements (crafter.constants.achievements of crafter 1.8), in its order.
ACHIEVEMENTS = (
    "collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling",
    "collect_stone", "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow", "eat_plant",
    "make_iron_pickaxe", "make_iron_sword", "make_stone_pickaxe", "make_stone_sword",
    "make_wood_pickaxe", "make_wood_sword", "place_furnace", "place_plant", "place_stone",
    "place_table", "wake_up",
)  # fmt: skip


def make_crafter(task: str = "reward", size: int = 64, **kwargs: Any) -> gymnasium.Env:
    """`crafter:reward` or `crafter:noreward`; kwargs go to CrafterEnv (length, area, view)."""
    task = task or "reward"
    if task not in TASKS:
        raise WmlabError(f"unknown Crafter task {task!r}; choose crafter:reward or crafter:noreward")
    return CrafterEnv(reward=task == "reward", size=size, **kwargs)


class CrafterEnv(gymnasium.Env):
    """crafter.Env with the gymnasium API: (size, size, 3) uint8 frames, 17 discrete actions.

    reward: whether the reward is given (else 0, with the would-be reward in info["reward"]).
    size: side of the square frame in pixels.
    length: steps after which an episode is truncated (Crafter's default 10000; None for never).
    area, view: Crafter's world size and the agent's view, in cells.
    seed: the world seed until the first seeded reset (None: Crafter draws one).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        reward: bool = True,
        size: int = 64,
        length: int | None = 10000,
        area: tuple[int, int] = (64, 64),
        view: tuple[int, int] = (9, 9),
        seed: int | None = None,
        render_mode: str | None = "rgb_array",
    ) -> None:
        import crafter

        self._settings = {
            "area": tuple(area),
            "view": tuple(view),
            "size": (size, size),
            "reward": reward,
            "length": length,
        }
        self._crafter = crafter
        self._env = crafter.Env(**self._settings, seed=seed)
        self.observation_space = spaces.Box(0, 255, (size, size, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(len(crafter.constants.actions))
        self.action_names = tuple(crafter.constants.actions)
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._env = self._crafter.Env(**self._settings, seed=seed)
        return self._env.reset(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside Crafter's action space {self.action_space}")
        observation, reward, done, info = self._env.step(int(action))
        terminated = info["discount"] == 0.0  # the player died
        return observation, float(reward), terminated, bool(done) and not terminated, info

    def render(self) -> np.ndarray:
        return self._env.render()


def achievement_success_rates(episodes: Iterable[Any]) -> dict[str, float]:
    """Per-achievement success rate in percent over `episodes`.

    Each episode is given as its last step's info dict (Crafter's achievement counts accumulate
    over the episode), as the list of its steps' info dicts, or as the achievements mapping itself.
    """
    unlocked = dict.fromkeys(ACHIEVEMENTS, 0)
    count = 0
    for episode in episodes:
        counts = _episode_achievements(episode)
        for name in ACHIEVEMENTS:
            unlocked[name] += counts.get(name, 0) > 0
        count += 1
    if count == 0:
        raise ValueError("achievement_success_rates needs at least one episode")
    return {name: 100.0 * unlocked[name] / count for name in ACHIEVEMENTS}


def crafter_score(success_rates_percent: Mapping[str, float]) -> float:
    """Crafter score in percent: exp(mean ln(1 + s_i)) - 1 over the 22 achievements.

    Achievements missing from the mapping count as never unlocked (0 %).
    """
    unknown = sorted(set(success_rates_percent) - set(ACHIEVEMENTS))
    if unknown:
        raise ValueError(f"not Crafter achievements: {unknown}")
    rates = [float(success_rates_percent.get(name, 0.0)) for name in ACHIEVEMENTS]
    if any(not 0.0 <= rate <= 100.0 for rate in rates):
        raise ValueError("success rates are percentages in [0, 100]")
    return math.exp(sum(math.log1p(rate) for rate in rates) / len(rates)) - 1.0


def _episode_achievements(episode: Any) -> Mapping[str, int]:
    if isinstance(episode, Mapping):
        return episode["achievements"] if "achievements" in episode else episode
    if isinstance(episode, Sequence) and episode:
        # Counts only grow within an episode, so the largest count is the last step's; taking the
        # maximum also accepts steps given in any order.
        merged: dict[str, int] = {}
        for info in episode:
            for name, value in _episode_achievements(info).items():
                merged[name] = max(merged.get(name, 0), value)
        return merged
    raise TypeError(
        f"an episode must be an info dict, a list of info dicts or an achievements mapping, got {type(episode).__name__}"
    )
