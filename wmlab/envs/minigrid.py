"""MiniGrid tasks (`minigrid:DoorKey-5x5`) as images or symbolic vectors.

Ids. Both the full gymnasium id and a short form work: `minigrid:MiniGrid-DoorKey-5x5-v0`,
`minigrid:MiniGrid-DoorKey-5x5` (latest version) and `minigrid:DoorKey-5x5` (MiniGrid, then
BabyAI tasks, latest version). An unknown id names the close matches.

Observations (`observation=`):
- "rgb_full": the whole grid as a (size, size, 3) uint8 image, as MiniGrid draws it (with the
  agent's field of view highlighted unless the task is made with `highlight=False`).
- "rgb_partial": the agent's own 7 x 7 view (agent at the bottom centre, facing up), same shape.
- "symbolic": float32 vector: MiniGrid's (object, colour, state) encoding of the agent's view,
  flattened, followed by a one-hot of the agent's direction (4 values). The encodings are kept as
  their small integers (object < 11, colour < 6, state < 3), bounded by the space's `high`.

Images are drawn at the largest whole number of pixels per cell that fits in `size` and centred
on a black canvas: cells stay sharp squares (no resampling blur) and non-square grids keep their
aspect ratio. A 5 x 5 grid at size 64 is 60 x 60 pixels inside a 2-pixel border; an 8 x 8 or
16 x 16 grid fills the frame exactly.

The mission string is not part of the observation: tasks whose instruction changes between
episodes (most of BabyAI) cannot be solved from these observations alone. It is given in the
reset info as `info["mission"]`. Every step's info carries `success`: the episode ended by
reaching the goal (terminated with a positive reward), which `wmlab eval` reports.

Actions. MiniGrid's seven actions are, in order: left, right, forward, pickup, drop, toggle,
done. All seven are kept by default, as in MiniGrid's own benchmarks, so results stay comparable.
`num_actions=n` keeps only the first n: 3 suits pure navigation (Empty, FourRooms, crossings),
6 drops `done`, which does nothing in every MiniGrid task. Restricting by task automatically would
silently change the problem, so it is the user's choice.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from wmlab.core.registry import UnknownNameError

OBSERVATIONS = ("rgb_full", "rgb_partial", "symbolic")
#: MiniGrid's action set, in the order of its enum.
ACTION_NAMES = ("left", "right", "forward", "pickup", "drop", "toggle", "done")
_NUM_DIRECTIONS = 4
_VERSION = re.compile(r"-v(\d+)$")


def make_minigrid(
    task: str,
    observation: str = "rgb_full",
    size: int = 64,
    num_actions: int | None = None,
    **kwargs: Any,
) -> gymnasium.Env:
    """A MiniGrid task; `kwargs` go to the task's constructor (e.g. `max_steps`, `highlight`)."""
    import minigrid  # noqa: F401  (registers the MiniGrid and BabyAI ids with gymnasium)

    if observation not in OBSERVATIONS:
        raise ValueError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
    # render() is ours (the whole grid at `size`); MiniGrid itself only needs not to open a window.
    kwargs.setdefault("render_mode", "rgb_array")
    env = gymnasium.make(resolve_minigrid_id(task), **kwargs)
    return MiniGridObservations(env, observation=observation, size=size, num_actions=num_actions)


def resolve_minigrid_id(task: str) -> str:
    """The registered gymnasium id for a full or short MiniGrid / BabyAI task name."""
    registered = [name for name in gymnasium.registry if name.startswith(("MiniGrid-", "BabyAI-"))]
    if task in registered:
        return task
    stems = [task] if task.startswith(("MiniGrid-", "BabyAI-")) else [f"MiniGrid-{task}", f"BabyAI-{task}"]
    for stem in stems:
        versions = [name for name in registered if _VERSION.sub("", name) == stem]
        if versions:
            return max(versions, key=lambda name: int(_VERSION.search(name).group(1)))
    short_names = [_VERSION.sub("", name).split("-", 1)[1] for name in registered]
    close = difflib.get_close_matches(task, short_names + registered, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join('minigrid:' + name for name in close)}?" if close else ""
    raise UnknownNameError(f"unknown MiniGrid task {task!r}.{hint}")


class MiniGridObservations(gymnasium.Wrapper):
    """Replace MiniGrid's dict observation with an image or a vector; optionally fewer actions."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, env: gymnasium.Env, observation: str, size: int, num_actions: int | None) -> None:
        super().__init__(env)
        self.mode = observation
        self.size = size
        base = env.unwrapped
        if observation == "symbolic":
            view = base.observation_space["image"].shape  # (view, view, 3)
            # Largest index of each encoding channel: object type, colour, door state.
            from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

            channel_high = [max(OBJECT_TO_IDX.values()), max(COLOR_TO_IDX.values()), max(STATE_TO_IDX.values())]
            high = np.concatenate([np.tile(channel_high, view[0] * view[1]), np.ones(_NUM_DIRECTIONS)])
            self.observation_space = spaces.Box(
                np.zeros_like(high, np.float32), high.astype(np.float32), dtype=np.float32
            )
        else:
            cells = (base.agent_view_size,) * 2 if observation == "rgb_partial" else (base.height, base.width)
            self._tile_size = size // max(cells)
            if self._tile_size < 1:
                raise ValueError(
                    f"a grid of {cells[1]} x {cells[0]} cells does not fit in {size} pixels; pass size >= {max(cells)}"
                )
            self.observation_space = spaces.Box(0, 255, (size, size, 3), dtype=np.uint8)
        if num_actions is not None:
            if not 1 <= num_actions <= len(ACTION_NAMES):
                raise ValueError(
                    f"num_actions must be in [1, {len(ACTION_NAMES)}] (MiniGrid's actions {ACTION_NAMES}), got {num_actions}"
                )
            self.action_space = spaces.Discrete(num_actions)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        return self._convert(observation), {**info, "mission": observation["mission"], "success": False}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside the action space {self.action_space}")
        observation, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "success": bool(terminated and reward > 0)}
        return self._convert(observation), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """The whole grid at (size, size, 3), whatever the observation, for videos."""
        base = self.env.unwrapped
        cells = max(base.height, base.width)
        frame = base.get_frame(highlight=base.highlight, tile_size=max(1, self.size // cells))
        return _centre_on_canvas(frame, self.size)

    def _convert(self, observation: dict) -> np.ndarray:
        base = self.env.unwrapped
        if self.mode == "symbolic":
            vector = np.zeros(self.observation_space.shape, np.float32)
            encoding = observation["image"].reshape(-1)
            vector[: encoding.size] = encoding
            vector[encoding.size + observation["direction"]] = 1.0
            return vector
        frame = base.get_frame(
            highlight=base.highlight, tile_size=self._tile_size, agent_pov=self.mode == "rgb_partial"
        )
        return _centre_on_canvas(frame, self.size)


def _centre_on_canvas(frame: np.ndarray, size: int) -> np.ndarray:
    """The frame in the middle of a black size x size canvas (the frame itself when it fits exactly)."""
    height, width = frame.shape[:2]
    if (height, width) == (size, size):
        return frame
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top : top + height, left : left + width] = frame
    return canvas
