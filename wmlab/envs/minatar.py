"""MinAtar (Young & Tian 2019, arXiv:1903.03176): five Atari games on a 10 x 10 grid, small enough
that learning shows within a CPU budget.

Ids: `minatar:breakout`, `minatar:asterix`, `minatar:freeway`, `minatar:seaquest`,
`minatar:space_invaders` (case, '-' and '_' are ignored: `minatar:SpaceInvaders` works).
Needs the `minatar` package: `pip install 'wmlab[minatar]'`.

Observation: the game's channel frame (10, 10, C) — one binary channel per object kind (C = 4
for Breakout up to 10 for Seaquest) — as a uint8 image (0 or 255), so pixel models read it as
they read RGB; `size` > 10 repeats cells (nearest neighbour) to a size x size frame, e.g. 16 for
a tokenizer with 2 stride-2 stages. Actions: the game's minimal action set as a Discrete space
(`minimal_actions=False`: all 6). The game's own settings are kept: sticky actions with
probability 0.1 and difficulty ramping (the MinAtar paper's); `max_episode_steps` truncates.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from wmlab.core.errors import WmlabError

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
#: Colours of the channels in `render` (later channels are drawn on top).
PALETTE = (
    (230, 60, 50),
    (60, 200, 80),
    (70, 110, 240),
    (240, 200, 40),
    (200, 80, 220),
    (40, 210, 220),
    (250, 140, 30),
    (150, 150, 150),
    (255, 255, 255),
    (120, 70, 30),
)


def game_name(task: str) -> str:
    """MinAtar's module name of `task` ("SpaceInvaders" -> "space_invaders")."""
    key = task.lower().replace("-", "").replace("_", "")
    by_key = {game.replace("_", ""): game for game in GAMES}
    if key not in by_key:
        close = difflib.get_close_matches(key, list(by_key), n=3)
        hint = f" Did you mean: {', '.join(by_key[name] for name in close)}?" if close else ""
        raise WmlabError(f"unknown MinAtar game {task!r}.{hint} Games: {', '.join(GAMES)}")
    return by_key[key]


class MinAtarEnv(gymnasium.Env):
    """One MinAtar game as a gymnasium environment with a uint8 (size, size, C) frame."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        game: str,
        size: int = 10,
        minimal_actions: bool = True,
        sticky_action_probability: float = 0.1,
        difficulty_ramping: bool = True,
        max_episode_steps: int | None = None,
    ):
        from minatar import Environment

        if size < 10:
            raise WmlabError(f"MinAtar frames are 10 x 10; size must be at least 10, got {size}")
        self.game = game_name(game)
        self.environment = Environment(
            self.game, sticky_action_prob=sticky_action_probability, difficulty_ramping=difficulty_ramping
        )
        self.actions = (
            list(self.environment.minimal_action_set())
            if minimal_actions
            else list(range(self.environment.num_actions()))
        )
        self.channels = int(self.environment.state_shape()[2])
        self.size = int(size)
        self.cells = (np.arange(self.size) * 10) // self.size  # nearest 10 x 10 cell of each output pixel
        self.action_space = spaces.Discrete(len(self.actions))
        self.observation_space = spaces.Box(0, 255, (self.size, self.size, self.channels), np.uint8)
        self.max_episode_steps = max_episode_steps
        self.steps = 0

    def _frame(self) -> np.ndarray:
        state = np.asarray(self.environment.state(), dtype=bool)
        return (state[self.cells][:, self.cells] * 255).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.environment.seed(int(seed))
        self.environment.reset()
        self.steps = 0
        return self._frame(), {}

    def step(self, action: Any):
        if not self.action_space.contains(int(action)):
            raise WmlabError(f"action {action!r} is outside {self.action_space}")
        reward, terminal = self.environment.act(self.actions[int(action)])
        self.steps += 1
        truncated = self.max_episode_steps is not None and self.steps >= self.max_episode_steps and not terminal
        return self._frame(), float(reward), bool(terminal), bool(truncated), {}

    def render(self) -> np.ndarray:
        """RGB (size, size, 3): each channel's objects in a colour of their own, on black."""
        state = self._frame() > 0
        image = np.zeros((self.size, self.size, 3), np.uint8)
        for channel in range(self.channels):
            image[state[..., channel]] = PALETTE[channel % len(PALETTE)]
        return image


def make_minatar(task: str, **kwargs: Any) -> MinAtarEnv:
    """`minatar:<game>` for wmlab.envs.adapter."""
    return MinAtarEnv(task, **kwargs)
