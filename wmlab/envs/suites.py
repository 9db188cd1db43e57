"""The environment suites wmlab adapts, for `wmlab envs`: example ids, spaces, install commands."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

#: suite -> (module that must be importable, pip extra, example ids, what its spaces are)
SUITES: dict[str, dict[str, Any]] = {
    "built-in": {
        "module": None,
        "extra": None,
        "examples": ["dyna-maze", "two-rooms", "two-rooms-state"],
        "spaces": "pure numpy; discrete states, 64x64 RGB pixels or state vectors (wmlab list)",
    },
    "gymnasium": {
        "module": "gymnasium",
        "extra": None,
        "examples": ["CartPole-v1", "Pendulum-v1"],
        "spaces": "any gymnasium id, or my_package.module:EnvId-v0 from your own package",
    },
    "dmc": {
        "module": "dm_control",
        "extra": "dmc",
        "examples": ["dmc:cartpole-swingup", "dmc:walker-walk"],
        "spaces": "DeepMind Control Suite: continuous actions in [-1, 1]; proprioceptive vectors or pixels",
    },
    "atari": {
        "module": "ale_py",
        "extra": "atari",
        "examples": ["atari:Pong", "atari:Breakout"],
        "spaces": "Arcade Learning Environment: pixel frames, discrete actions",
    },
    "minigrid": {
        "module": "minigrid",
        "extra": "minigrid",
        "examples": ["minigrid:DoorKey-5x5", "minigrid:Empty-8x8"],
        "spaces": "64x64 RGB of the full grid or the agent's view, or a symbolic vector; 7 discrete actions",
    },
    "crafter": {
        "module": "crafter",
        "extra": "crafter",
        "examples": ["crafter:reward", "crafter:noreward"],
        "spaces": "64x64 RGB, 17 discrete actions, 22 achievements (Crafter score)",
    },
    "minatar": {
        "module": "minatar",
        "extra": "minatar",
        "examples": ["minatar:breakout", "minatar:space_invaders"],
        "spaces": "MinAtar: 10x10 frames of 4-10 binary object channels as uint8 (size option upscales), minimal discrete actions",
    },
}


def describe_suites(probe: bool = True) -> list[dict[str, Any]]:
    """One dict per suite: name, examples, availability, the install command when missing.

    probe: build each available suite's first example (without resetting it) and report its
    actual observation and action spaces; a failure is reported in "error", not raised.
    """
    rows = []
    for name, suite in SUITES.items():
        available = suite["module"] is None or importlib.util.find_spec(suite["module"]) is not None
        row = {
            "suite": name,
            "examples": list(suite["examples"]),
            "description": suite["spaces"],
            "available": available,
            "install": None if available or suite["extra"] is None else f"pip install 'wmlab[{suite['extra']}]'",
        }
        if probe and available:
            row.update(_probe(suite["examples"][0]))
        rows.append(row)
    return rows


def _probe(env_id: str) -> dict[str, Any]:
    from wmlab.envs.adapter import make_env

    try:
        env = make_env(env_id)
    except Exception as error:  # noqa: BLE001 — any failure is shown to the user, not raised
        return {"error": f"{type(error).__name__}: {error}"}
    try:
        return {"observation": _space_summary(env.observation_space), "action": _space_summary(env.action_space)}
    finally:
        env.close()


def _space_summary(space) -> str:
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return ", ".join(f"{key} {_space_summary(sub)}" for key, sub in space.spaces.items())
    if isinstance(space, spaces.Discrete):
        return f"Discrete({space.n})"
    if isinstance(space, spaces.Box):
        low, high = np.min(space.low), np.max(space.high)
        return f"{tuple(space.shape)} {np.dtype(space.dtype).name} in [{low:g}, {high:g}]"
    return str(space)
