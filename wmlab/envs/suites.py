"""The environment suites wmlab adapts, for `wmlab envs`: example ids, spaces, install commands."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from wmlab.envs.adapter import SUITES, make_env

#: What `wmlab envs` shows of each suite: example ids and what its spaces are. The module a prefixed
#: suite needs and the pip extra that installs it are the adapter's (wmlab.envs.adapter.SUITES).
DESCRIPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "built-in": (
        ("dyna-maze", "two-rooms", "two-rooms-state"),
        "pure numpy; discrete states, 64x64 RGB pixels or state vectors (wmlab list)",
    ),
    "gymnasium": (
        ("CartPole-v1", "Pendulum-v1"),
        "any gymnasium id, or my_package.module:EnvId-v0 from your own package",
    ),
    "dmc": (
        ("dmc:cartpole-swingup", "dmc:walker-walk"),
        "DeepMind Control Suite: continuous actions in [-1, 1]; proprioceptive vectors or pixels",
    ),
    "atari": (("atari:Pong", "atari:Breakout"), "Arcade Learning Environment: pixel frames, discrete actions"),
    "minigrid": (
        ("minigrid:DoorKey-5x5", "minigrid:Empty-8x8"),
        "64x64 RGB of the full grid or the agent's view, or a symbolic vector; 7 discrete actions",
    ),
    "crafter": (
        ("crafter:reward", "crafter:noreward"),
        "64x64 RGB, 17 discrete actions, 22 achievements (Crafter score)",
    ),
    "minatar": (
        ("minatar:breakout", "minatar:space_invaders"),
        "MinAtar: 10x10 frames of 4-10 binary object channels as uint8 (size option upscales), minimal discrete actions",
    ),
}

#: The module each suite without a prefix needs (None: nothing beyond wmlab's own dependencies).
UNPREFIXED_MODULES = {"built-in": None, "gymnasium": "gymnasium"}


def describe_suites(probe: bool = True) -> list[dict[str, Any]]:
    """One dict per suite: name, examples, availability, the install command when missing.

    probe: build each available suite's first example (without resetting it) and report its
    actual observation and action spaces; a failure is reported in "error", not raised.
    """
    rows = []
    for name, (examples, description) in DESCRIPTIONS.items():
        adapted = SUITES.get(name)
        module = adapted.module if adapted else UNPREFIXED_MODULES[name]
        available = module is None or importlib.util.find_spec(module) is not None
        row = {
            "suite": name,
            "examples": list(examples),
            "description": description,
            "available": available,
            "install": None if available or adapted is None else f"pip install 'wmlab[{adapted.extra}]'",
        }
        if probe and available:
            row.update(_probe(examples[0]))
        rows.append(row)
    return rows


def _probe(env_id: str) -> dict[str, Any]:
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
